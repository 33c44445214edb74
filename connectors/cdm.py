"""The CDM push client (Boss-Insights-style writes): one ``POST api/{object}`` per item,
one ``DELETE api/{object}/{id}`` per delete.

The CDM has no idempotency key: posting a create twice creates two records. So an
answer lost after a create may have arrived (a transport error mid-exchange, a 500,
502 or 504), or a create in a resent batch, is never posted blindly: the record is
first looked up by the sync's natural key. Updates carry their id and deletes name
it, so both are simply sent again.

A diffed sync (``PushBatch.key_field`` set) knows its records by their key, not by
id: an update without an id, and an insert of an ``upsert``/``insert``/``mirror``
sync, first look the record up by that key (``cdm_protocol.plan`` says what a match,
none, or several then mean). An update or delete of a record the destination does
not have ends ``not_found``.

Accepted is never rejected (``docs/push-wire.md``): any 2xx confirms the record, with
its id when the answer carries one; only a 4xx answer to the write rejects it.

Parsing lives in ``replicad.connectors.cdm_protocol``; this module moves bytes through
the shared exchange and never touches SQLite.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, replace

import httpx
import structlog

from replicad.connectors.cdm_protocol import (
    NO_ID_YET,
    NO_LOOKUP_STATUS,
    NOT_FOUND_STATUS,
    REJECT_STATUS,
    RETRY_HINT,
    CdmProtocolError,
    NaturalKey,
    Plan,
    Written,
    ambiguous,
    cannot_look_up,
    item_tracking_id,
    match_key,
    missing,
    natural_key,
    no_match,
    object_path,
    parse_deleted,
    parse_matches,
    parse_written,
    plan,
    record_path,
    rejection,
    resolve_lookup,
    write_body,
    write_headers,
)
from replicad.connectors.errors import ConnectorError
from replicad.connectors.exchange import ConnectorSettings, Exchange, HttpConnector, MaybeApplied
from replicad.connectors.push_model import PushBatch, PushItem, PushOutcome, PushResult
from replicad.connectors.ratelimit import TokenBucket

log = structlog.get_logger("replicad.cdm")

# The credentials check's filter: a field no record has, so the answer lists nothing.
CHECK_FILTER = {"replicad_check": "1"}
# Answers to the credentials check that came past authentication besides any 2xx: the
# object (404) or the listing of it (405) does not exist on this server.
CHECK_ACCEPT = frozenset({404, 405})


@dataclass(slots=True)
class CdmSettings(ConnectorSettings):
    """What a CDM push connection needs (built by the daemon from the config)."""

    push_to_source: bool = False  # send X-Sync-Data: push (the CDM pushes on to sources)
    sources: tuple[str, ...] = ()  # X-Sync-Sources, only with push_to_source
    # The field that finds a create whose answer was lost; unset, a diffed sync's key
    # field serves (``PushBatch.key_field``).
    natural_key: str | None = None


@dataclass(slots=True)
class CdmStats:
    """Counts of what went over the wire, for progress, logs and benchmarks."""

    write: int = 0
    lookup: int = 0
    delete: int = 0
    retries: int = 0

    @property
    def total(self) -> int:
        """All HTTP requests, retries included."""
        return self.write + self.lookup + self.delete + self.retries


# Destinations (base URLs) already warned of answering without the tracking echo.
_WARNED_NO_ECHO: set[str] = set()


class CdmClient(HttpConnector):
    """An async CDM write client (satisfies PushConnector)."""

    def __init__(
        self,
        settings: CdmSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        bucket: TokenBucket | None = None,
    ) -> None:
        self.settings = settings
        self.stats = CdmStats()
        self._exchange = Exchange(
            settings,
            self.stats,
            transport=transport,
            rng=rng,
            bucket=bucket,  # the connection's, shared by its syncs
            auth_hint="token rejected or missing the api.write scope",
        )

    async def check_credentials(self, object: str) -> None:
        """List ``object`` by a field no record has (read-only); raises AuthRefused if
        the token is refused. Any 2xx, 404 or 405 means the server took the token."""
        request = self._exchange.http.build_request(
            "GET", object_path(object), params=CHECK_FILTER,
            headers={"X-Tracking-ID": f"replicad-check-{uuid.uuid4()}"},
        )  # fmt: skip
        await self._exchange.send(request, "credentials check", accept=CHECK_ACCEPT)

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
            result.outcomes.append(self.redacted(outcome))
        return result

    async def _push_item(self, batch: PushBatch, item: PushItem) -> PushOutcome:
        tracking_id = item_tracking_id(batch, item)
        step = plan(batch, item)
        if step.action == "delete":
            return await self._delete(batch, item, tracking_id)
        if step.action == "match":
            return await self._match(batch, item, tracking_id, step)
        if item.id is not None:
            return await self._write(batch.object, item, tracking_id, 0)
        if item.op == "update":
            # An edit of a record whose id is not known (its create was accepted without
            # one): posted without an id it would be a second create. The outbox holds
            # such edits until the pull brings the record; this is the last guard.
            return PushOutcome(item.entry, rejected=NO_ID_YET)
        return await self._create(batch, item, tracking_id, checked=False)

    async def _create(
        self, batch: PushBatch, item: PushItem, tracking_id: str, *, checked: bool
    ) -> PushOutcome:
        """POST a create, never twice: a lost answer is resolved by a lookup first.

        ``checked``: a lookup just showed the record is not there, so a resent batch
        needs no second look before posting.
        """
        if batch.resend and not checked:
            # The earlier attempt may have created the record: look before posting.
            found = await self._find_create(batch, item, tracking_id)
            if found is not None:
                return found
        attempt = 0
        while True:
            try:
                return await self._write(batch.object, item, tracking_id, attempt)
            except MaybeApplied as lost:
                attempt = lost.attempt
                found = await self._find_create(batch, item, tracking_id)
                if found is not None:
                    return found
                # Nothing arrived: posting again cannot duplicate the record.

    async def _by_key(
        self, batch: PushBatch, item: PushItem, tracking_id: str
    ) -> PushOutcome | str | None:
        """The id of the one record whose ``key_field`` equals the item's, None when
        there is none, or the item's outcome when it cannot be told (no usable key, no
        lookup at this server, several matches)."""
        assert batch.key_field is not None
        key = match_key(item, batch.key_field)
        if not isinstance(key, NaturalKey):
            return PushOutcome(item.entry, rejected=key)
        found = await self._lookup(batch.object, key, tracking_id)
        if isinstance(found, int):
            return PushOutcome(item.entry, rejected=cannot_look_up(key, found))
        if len(found) > 1:
            return PushOutcome(item.entry, rejected=ambiguous(batch.object, key, len(found)))
        return found[0] if found else None

    async def _match(
        self, batch: PushBatch, item: PushItem, tracking_id: str, step: Plan
    ) -> PushOutcome:
        """Find the item's record by the sync's key field, then write as ``step`` says."""
        assert batch.key_field is not None  # plan() matches only diffed syncs
        found = await self._by_key(batch, item, tracking_id)
        if isinstance(found, PushOutcome):
            return found
        if found is not None:
            rid = found
            if step.on_match == "confirm":
                # Census insert never changes a record the destination already has.
                return PushOutcome(item.entry, id=rid)
            outcome = await self._write(batch.object, replace(item, id=rid), tracking_id, 0)
            if outcome.confirmed and outcome.id is None:
                # Accepted without the record (202/204): it is still the one found.
                return replace(outcome, id=rid)
            if not (outcome.not_found and step.on_none == "create"):
                return outcome
            # Deleted between the lookup and the update: an upsert creates it anew.
        if step.on_none == "not_found":
            key = match_key(item, batch.key_field)
            assert isinstance(key, NaturalKey)  # _by_key found it usable
            return PushOutcome(item.entry, rejected=no_match(batch.object, key), not_found=True)
        return await self._create(batch, item, tracking_id, checked=True)

    async def _write(self, obj: str, item: PushItem, tracking_id: str, attempt: int) -> PushOutcome:
        """POST the record through the exchange, ``attempt`` retries already used.

        For a create, a failure after which the write may have been applied raises
        ``MaybeApplied`` (after the backoff wait) instead of posting again. An update
        answered 404/410 names a record the destination does not have: not_found.
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
        if item.id is not None and answer.status in NOT_FOUND_STATUS:
            reason = missing(obj, item.id, answer.status, answer.json())
            return PushOutcome(item.entry, rejected=reason, not_found=True)
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
        self._check_echo(written, tracking_id)
        if written.outcome.id is None:
            log.warning("push.confirmed_without_id", tracking_id=tracking_id, status=answer.status)
        return written.outcome

    async def _delete(self, batch: PushBatch, item: PushItem, tracking_id: str) -> PushOutcome:
        """DELETE the record ``item.id`` names; deletes are idempotent, so a lost answer
        is simply sent again.

        404/410 mean the record is not there: not_found, unless a lost answer or an
        earlier attempt of the batch may have deleted it, when it is most likely gone
        by our own hand and the delete is confirmed.
        """
        if item.id is None and batch.key_field is not None and batch.key_field in item.data:
            # A diffed row whose create was accepted without an id (a 202): find the
            # record by the sync's key field.
            found = await self._by_key(batch, item, tracking_id)
            if isinstance(found, PushOutcome):
                return found
            if found is not None:
                item = replace(item, id=found)
        if item.id is None:
            # Never created at the destination (or its id never learned): nothing to
            # delete there.
            reason = f"{batch.object} has no id at the destination: it does not exist there"
            return PushOutcome(item.entry, rejected=reason, not_found=True)
        s = self.settings
        headers = write_headers(tracking_id, push_to_source=s.push_to_source, sources=s.sources)
        self.stats.delete += 1
        request = self._exchange.http.build_request(
            "DELETE", record_path(batch.object, item.id), headers=headers
        )
        answer = await self._exchange.send(request, "delete", accept=REJECT_STATUS)
        if answer.status in NOT_FOUND_STATUS:
            if answer.lossy or batch.resend:
                log.info("push.delete_already_gone", tracking_id=tracking_id)
                return PushOutcome(item.entry, id=item.id)
            reason = missing(batch.object, item.id, answer.status, answer.json())
            return PushOutcome(item.entry, rejected=reason, not_found=True)
        if answer.status in REJECT_STATUS:
            return PushOutcome(item.entry, rejected=rejection(answer.status, answer.json()))
        deleted = parse_deleted(
            answer.status,
            answer.json(),
            entry=item.entry,
            rid=item.id,
            tracking_id=tracking_id,
            echoed=answer.headers.get("X-Tracking-ID"),
            sync_id=answer.headers.get("X-Sync-ID"),
        )
        self._check_echo(deleted, tracking_id)
        return deleted.outcome

    def _check_echo(self, written: Written, tracking_id: str) -> None:
        # Once per destination (a connection), not per sync's client: the server's
        # habit, not news about each write.
        if not written.echoed and self.settings.base_url not in _WARNED_NO_ECHO:
            _WARNED_NO_ECHO.add(self.settings.base_url)
            log.warning(
                "push.no_tracking_echo", tracking_id=tracking_id, url=self.settings.base_url
            )

    async def _lookup(self, obj: str, key: NaturalKey, tracking_id: str) -> list[str] | int:
        """Ids of the records whose ``key.field`` is ``key.value``, or the status
        (404/405) of a server that cannot look records up by a field."""
        self.stats.lookup += 1
        request = self._exchange.http.build_request(
            "GET", object_path(obj), params={key.field: key.value},
            headers={"X-Tracking-ID": tracking_id},
        )  # fmt: skip
        answer = await self._exchange.send(
            request, "lookup", accept=NO_LOOKUP_STATUS, json_required=True
        )
        if answer.status in NO_LOOKUP_STATUS:
            return answer.status
        ids = parse_matches(answer.status, answer.json(), key)
        log.info("push.lookup", tracking_id=tracking_id, field=key.field, matches=len(ids))
        return ids

    async def _find_create(
        self, batch: PushBatch, item: PushItem, tracking_id: str
    ) -> PushOutcome | None:
        """The outcome of a create that may have arrived, or None if it surely did not.

        The record is looked for by the configured natural key, else by the sync's
        key field (a diffed sync's primary identifier).
        """
        # An append creates a record per row on purpose, several per key over time:
        # the key cannot tell ours from an earlier one, only a configured natural key.
        by_key = batch.key_field if batch.operation != "append" else None
        key = natural_key(item, self.settings.natural_key or by_key)
        if not isinstance(key, NaturalKey):
            # Posting again could make a second record: the entry waits for the pull.
            return PushOutcome(item.entry, rejected=key, in_doubt=True)
        found = await self._lookup(batch.object, key, tracking_id)
        if isinstance(found, int):
            return PushOutcome(
                item.entry,
                rejected=(
                    "create may have reached the destination; this destination cannot look "
                    f"records up by {key.field} (HTTP {found}) — {RETRY_HINT}"
                ),
                in_doubt=True,
            )
        return resolve_lookup(item.entry, key, found)


__all__ = ["CdmClient", "CdmProtocolError", "CdmSettings", "CdmStats"]
