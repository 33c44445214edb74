"""The Endgrate push client: one transfer per batch, then its returned data.

A batch becomes one ``POST api/push/transfer`` whose ``transfer_data[i]`` is
``batch.items[i]``; the client then pages through ``api/push/data`` (polling while the
transfer runs) and maps the rows back to one outcome per item, reading ``api/errors``
only when some row has no id. Endgrate keys every record by ``internal_id`` within a
session, so posting a transfer again (after a lost answer, or when the batch is
resent) updates the same records and never duplicates them: every request here may
simply be retried.

An ``insert`` or ``append`` sync sends ``disable_upsert: true``: its records are
created, never merged into a matching one. Endgrate has no delete, and no ``update`` or
``mirror`` sync reaches it (the config refuses them); a batch of one fails the push.

Accepted is never rejected (``docs/push-wire.md``): only a 4xx answer to the transfer
itself, or an error naming the item, rejects an entry. A failing follow-up read leaves
the batch in flight, to be resent.

Parsing lives in ``connectors.endgrate_protocol``; this module moves bytes through the
shared exchange and never touches SQLite.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import structlog

from replicad.connectors.endgrate_protocol import (
    MAX_PAGE_LIMIT,
    EndgrateProtocolError,
    ReturnedRow,
    TransferError,
    accepted_without_data,
    data_params,
    is_pending,
    next_offset,
    outcomes,
    parse_data_page,
    parse_errors,
    parse_transfer,
    rows_all_have_ids,
    transfer_body,
    unsupported,
)
from replicad.connectors.errors import (
    ConnectorError,
    RemoteRefused,
    RemoteUnreachable,
    plain_message,
)
from replicad.connectors.exchange import Answer, ConnectorSettings, Exchange, HttpConnector
from replicad.connectors.push_model import PushBatch, PushOutcome, PushResult
from replicad.connectors.ratelimit import TokenBucket

# Statuses of api/errors that mean the server has no errors list (the seed names none;
# Endgrate itself offers an error webhook).
NO_ERRORS_LIST = (404, 405)
# Statuses of api/push/data that mean the server returns no data (the seed allows a
# data webhook instead): the accepted transfer's entries are confirmed without ids.
NO_RETURNED_DATA = (404, 405)
# The credentials check reads the results of a transfer that does not exist; besides
# any 2xx, these answers came past authentication (unknown transfer, no such route,
# a transfer id the server finds malformed).
CHECK_TRANSFER_ID = "replicad-check"
CHECK_ACCEPT = (400, 404, 405, 422)


class _NoReturnedData(Exception):
    """api/push/data does not exist on this server (internal signal)."""


log = structlog.get_logger("replicad.endgrate")


@dataclass(slots=True)
class EndgrateSettings(ConnectorSettings):
    """What an Endgrate push connection needs (built by the daemon from the config)."""

    session_id: str = ""
    disable_upsert: bool = False
    sample_data: bool = False
    synchronous: bool = True
    page_limit: int = 100  # rows per api/push/data page (Endgrate allows 1..1000)
    poll_interval: float = 0.5  # seconds between polls of a transfer still running
    # Re-reads of the returned data while some row has no id and no error names it;
    # after them such rows are confirmed without an id (they were accepted).
    id_rereads: int = 2

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
        bucket: TokenBucket | None = None,
    ) -> None:
        self.settings = settings
        self.stats = EndgrateStats()
        self._exchange = Exchange(
            settings,
            self.stats,
            transport=transport,
            rng=rng,
            bucket=bucket,  # the connection's, shared by its syncs
            auth_hint="token rejected or not allowed to push",
        )

    async def check_credentials(self, object: str) -> None:
        """Read the data of a transfer that does not exist (read-only); raises
        AuthRefused if the token is refused. ``object`` is not needed: Endgrate
        authenticates per account, not per type."""
        request = self._exchange.http.build_request(
            "GET", "/api/push/data", params={"transfer_id": CHECK_TRANSFER_ID},
            headers={"X-Tracking-ID": f"replicad-check-{uuid.uuid4()}"},
        )  # fmt: skip
        await self._exchange.send(request, "credentials check", accept=CHECK_ACCEPT)

    async def push(self, batch: PushBatch) -> PushResult:
        """Send a batch as one transfer; remote failures go to ``PushResult.error``."""
        if not batch.items:
            return PushResult()
        refused = unsupported(batch)
        if refused is not None:
            # Nothing is sent: the entries stay in flight and the push fails loudly.
            return self._failed(batch, ConnectorError(refused))
        try:
            # A body cut short is retried (posting again is idempotent by internal_id);
            # one that is no JSON at all still means accepted (see docs/push-wire.md).
            answer = await self._request("POST", "/api/push/transfer", "push/transfer", batch,
                                         json_body=self._transfer_body(batch),
                                         json_required=True)  # fmt: skip
        except RemoteRefused as e:
            # A 4xx to the transfer itself: the destination refused these items.
            reason = f"refused by the destination: {e}"
            return self._done(
                batch, None, [PushOutcome(i.entry, rejected=reason) for i in batch.items]
            )
        except ConnectorError as e:
            return self._failed(batch, e)
        transfer_id = parse_transfer(answer.status, answer.json())
        if transfer_id is None:
            log.warning("push.no_transfer_id", tracking_id=batch.tracking_id, status=answer.status)
            return self._done(batch, None, accepted_without_data(batch))
        try:
            result = await self._outcomes(batch, transfer_id)
        except _NoReturnedData:
            log.warning("push.no_returned_data", tracking_id=batch.tracking_id)
            return self._done(batch, transfer_id, accepted_without_data(batch))
        except ConnectorError as e:
            return self._failed(batch, e)
        return self._done(batch, transfer_id, result)

    def _transfer_body(self, batch: PushBatch) -> dict[str, Any]:
        s = self.settings
        self.stats.transfer += 1
        return transfer_body(
            batch,
            session_id=s.session_id,
            synchronous=s.synchronous,
            disable_upsert=s.disable_upsert,
            sample_data=s.sample_data,
        )

    async def _outcomes(self, batch: PushBatch, transfer_id: str) -> list[PushOutcome]:
        """Read the transfer's results until every item has an outcome.

        The errors list is read only when some row has no id. Rows without an id that
        no error names are read again a bounded number of times, then confirmed without
        an id, with a warning: the transfer was accepted, and the pull (or a later
        read) brings the id.
        """
        s = self.settings
        for attempt in range(s.id_rereads + 1):
            rows = await self._returned_rows(batch, transfer_id)
            if not s.sample_data and rows_all_have_ids(rows, len(batch.items)):
                return outcomes(
                    batch, transfer_id, rows, (), sample_data=False, final=True
                ).outcomes
            errors = await self._errors(batch, transfer_id)
            final = attempt == s.id_rereads
            done = outcomes(
                batch, transfer_id, rows, errors, sample_data=s.sample_data, final=final
            )
            if not done.unresolved:
                return done.outcomes
            log.info("push.ids_pending", tracking_id=batch.tracking_id, rows=len(done.unresolved))
            await anyio.sleep(s.poll_interval * 2**attempt)
        raise AssertionError("unreachable: the last re-read is final")  # pragma: no cover

    def _done(
        self, batch: PushBatch, transfer_id: str | None, result: list[PushOutcome]
    ) -> PushResult:
        rejected = sum(1 for o in result if not o.confirmed)
        without_id = sum(1 for o in result if o.confirmed and o.id is None)
        log.info(
            "push.done",
            tracking_id=batch.tracking_id,
            transfer_id=transfer_id,
            items=len(result),
            rejected=rejected,
        )
        if without_id and not self.settings.sample_data:
            log.warning(
                "push.confirmed_without_id",
                tracking_id=batch.tracking_id,
                transfer_id=transfer_id,
                items=without_id,
            )
        return PushResult([self.redacted(o) for o in result])

    def _failed(self, batch: PushBatch, error: ConnectorError) -> PushResult:
        log.warning(
            "push.failed",
            tracking_id=batch.tracking_id,
            error=type(error).__name__,
            message=str(error),
        )
        return PushResult(error=error)

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
            answer = await self._request(
                "GET",
                "/api/push/data",
                "push/data",
                batch,
                params=data_params(transfer_id, s.page_limit, offset),
                accept=(400, *NO_RETURNED_DATA),
                json_required=True,
            )
            body = answer.json()
            if is_pending(answer.status, body):
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
            if answer.status in NO_RETURNED_DATA:
                raise _NoReturnedData()
            if answer.status == 400:
                raise RemoteRefused(
                    self._exchange.redact(f"push/data: {plain_message(answer.status, body)}")
                )
            page = parse_data_page(answer.status, body)
            next_at = next_offset(page, expected=expected, offset=offset)
            rows.extend(page.rows)
            offset = next_at
        return rows

    async def _errors(self, batch: PushBatch, transfer_id: str) -> list[TransferError] | None:
        """The transfer's errors; None when the server has no errors list."""
        self.stats.errors += 1
        answer = await self._request(
            "GET",
            "/api/errors",
            "errors",
            batch,
            params={"transfer_id": transfer_id},
            accept=NO_ERRORS_LIST,
            json_required=True,
        )
        if answer.status in NO_ERRORS_LIST:
            return None
        return parse_errors(answer.status, answer.json())

    async def _request(
        self,
        method: str,
        path: str,
        what: str,
        batch: PushBatch,
        *,
        json_body: Any = None,
        params: dict[str, str | int] | None = None,
        accept: tuple[int, ...] = (),
        json_required: bool = False,
    ) -> Answer:
        """One request through the exchange, with the batch's tracking id.

        Every Endgrate request is idempotent (a transfer is keyed by internal_id), so
        an answer lost after the request may have arrived is simply retried.
        """
        request = self._exchange.http.build_request(
            method, path, json=json_body, params=params,
            headers={"X-Tracking-ID": batch.tracking_id},
        )  # fmt: skip
        return await self._exchange.send(request, what, accept=accept, json_required=json_required)


__all__ = ["EndgrateClient", "EndgrateProtocolError", "EndgrateSettings", "EndgrateStats"]
