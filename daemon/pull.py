"""The pull engine: one cycle of a pull sync, over any pull connector.

flush confirmations pending → start a session → drain it (the next page is fetched
while the current one is decoded and applied) → flush confirmations. Another session
follows, up to ``max_sessions``, while the last one reported failed objects or may
have lost a page. Written against ``connectors.pull_model.PullConnector`` (the seam):
Sell's ack keys are the checkpoint tokens the store commits with each page and the
connector confirms afterwards.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Protocol

import anyio
import structlog
from anyio.streams.memory import MemoryObjectSendStream

from replicad.connectors.errors import ConnectorError, ProtocolError
from replicad.connectors.pull_model import PullConnector, PulledPage
from replicad.connectors.ratelimit import NOTICE_EVERY
from replicad.daemon.config import ConfigError, Connection, Sync
from replicad.daemon.cycle_status import recorded_cycle
from replicad.daemon.exits import unwrap
from replicad.store import Naming, PageBatch, PullTarget, Replica

log = structlog.get_logger("replicad.pull")

# A server may answer empty 200 pages; only 204 ends a session. These bound how long
# we keep asking before we abandon the session for a later one.
EMPTY_PAGE_PAUSE = 0.2
MAX_EMPTY_PAGES = 50
BUDGET_LOG_EVERY = 60.0


class _PageMayBeLost:
    """Marker from the fetcher: a retried fetch may have cost the session a page."""


PAGE_MAY_BE_LOST = _PageMayBeLost()


@dataclass(frozen=True, slots=True)
class _BadAnswer:
    """From the fetcher: the queue answered something that is not a page."""

    error: ProtocolError


_Fetched = bytes | _PageMayBeLost | _BadAnswer | BaseException


class PullProgress(Protocol):
    """Where a cycle reports its progress (a progress bar, or nothing)."""

    def session(self, sync: str, total: int | None) -> None:
        """A session started with ``total`` queued items."""

    def page(self, sync: str, items: int, count_left: int | None) -> None:
        """A page of ``items`` was committed."""

    def waiting(self, sync: str, seconds: float, items_per_second: float) -> None:
        """The next request waits ``seconds`` for the rate budget, which allows about
        ``items_per_second`` in the long run."""


class NoProgress:
    """Progress that shows nothing (not a terminal, or the daemon)."""

    def session(self, sync: str, total: int | None) -> None:
        """Ignore."""

    def page(self, sync: str, items: int, count_left: int | None) -> None:
        """Ignore."""

    def waiting(self, sync: str, seconds: float, items_per_second: float) -> None:
        """Ignore."""


@dataclass(slots=True)
class PullOutcome:
    """What a cycle did."""

    sessions: int = 0
    pages: int = 0
    items: int = 0
    applied: int = 0
    quarantined: int = 0
    failed_objects: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    skipped: int = 0


def pull_target(sync: Sync, resync: str | None = None) -> PullTarget:
    """The store's view of a pull sync (``resync``: the request of the full pull that
    is running, if one is)."""
    return PullTarget(
        sync.label,
        sync.connection,
        sync.prefix,
        sync.operation == "mirror",
        resync,
        sync.operation,
        frozenset(sync.types) if sync.types else None,
        pull_naming(sync),
    )


def pull_naming(sync: Sync) -> Naming | None:
    """A pull sync's column naming (None: every field under its own name)."""
    if (
        not sync.pull_mappings
        and sync.field_behavior == "sync_all_properties"
        and sync.field_normalization == "match_source_names"
    ):
        return None
    mapped = {
        t: {m.column: m.to for m in ms if m.column is not None} for t, ms in sync.pull_mappings
    }
    return Naming(mapped, sync.field_behavior == "sync_all_properties", sync.field_normalization)


async def flush_acks(replica: Replica, client: PullConnector, conn: Connection) -> int:
    """Confirm every committed-but-unconfirmed token, in batches; returns how many."""
    sent = 0
    while (batch := await replica.pending_acks(conn.name, client.confirm_batch)).seqs:
        if batch.keys:
            await client.confirm(batch.keys)
        await replica.forget_acks(batch)
        sent += len(batch.keys)
    return sent


class IncompletePull(ConnectorError):
    """A cycle ended with a page lost in its last allowed session."""


class DevicePinned(ConfigError):
    """A full pull is due, but the config pins the device it must replace."""


class StaleDevice(Exception):
    """A full pull was asked for after the cycle's client was made: it still has the
    device the full pull replaces (``Engine.pull`` makes a new client and runs again)."""


async def pull_cycle(
    replica: Replica,
    sync: Sync,
    conn: Connection,
    client: PullConnector,
    progress: PullProgress | None = None,
    outcome: PullOutcome | None = None,
) -> PullOutcome:
    """Run one pull cycle; raises connector errors after recording them in status.

    The sync must be registered in the replica (``open_engine`` does it at start-up).
    ``outcome`` is filled in as the cycle goes (so a failed cycle's counts are known).
    """
    progress = progress or NoProgress()
    outcome = outcome if outcome is not None else PullOutcome()
    said = progress
    logged = [-BUDGET_LOG_EVERY]
    sent_before = client.stats.total

    async def waiting(seconds: float) -> None:
        # The budget, not the network or the CPU, sets the pace: say so (bar, status,
        # a log line a minute), with the pace it allows.
        # Items per request so far this cycle (acks and session starts included).
        per_request = outcome.items / max(1, client.stats.total - sent_before)
        items_per_second = client.bucket.per_second * (per_request or 1.0)
        if time.monotonic() - logged[0] >= BUDGET_LOG_EVERY:
            logged[0] = time.monotonic()
            log.info("pull.budget_wait", sync=sync.label, seconds=round(seconds, 2),
                     items_per_second=round(items_per_second))  # fmt: skip
        said.waiting(sync.label, seconds, items_per_second)
        # Shown by status a while past this wait: the next ones come as long as the
        # budget paces the pull (each told at most every NOTICE_EVERY seconds).
        await replica.note_budget_wait(sync.label, seconds + 2 * NOTICE_EVERY)

    client.bucket.on_wait = waiting
    try:
        return await _pull_cycle(replica, sync, conn, client, progress, outcome)
    finally:
        client.bucket.on_wait = None


async def _pull_cycle(
    replica: Replica,
    sync: Sync,
    conn: Connection,
    client: PullConnector,
    progress: PullProgress,
    outcome: PullOutcome,
) -> PullOutcome:
    # A full pull (a copy's, or `replicad resync`) notes every id it brings. It needs
    # a device other than the one drained before: a request made after the client was
    # built leaves that client stale (the caller builds a new one), and a device the
    # config pins cannot change (a recorded failure, below). A request made from here
    # on concerns this cycle only in that it notes nothing for it (store.identity).
    target = pull_target(sync, await replica.resync_request(conn.name))
    old_device = target.resync is not None and client.identity == await replica.resync_device(
        conn.name
    )
    if old_device and conn.device_uuid is None:
        raise StaleDevice(f"{conn.name}: a full pull was asked for since its client was made")
    async with recorded_cycle(replica, sync.label):
        if old_device:
            raise DevicePinned(
                f"connections.{conn.name}.device_uuid pins the device this replica pulled "
                "with before, but a full pull (`replicad resync`, or this file is a copy "
                "of another replica) needs a new one: under the same device the remote "
                "sends only what is new. Set another device_uuid for this replica, or "
                "remove the key; nothing was pulled"
            )
        await flush_acks(replica, client, conn)
        lost = drained = False
        for _ in range(sync.max_sessions):
            session = await client.start(await replica.checkpoint(conn.name))
            if session is None:
                lost, drained = False, True
                break
            outcome.sessions += 1
            await replica.sync_started(sync.label, session.total_count)
            progress.session(sync.label, session.total_count)
            log.info("pull.session", sync=sync.label, total=session.total_count)
            again, lost = await _drain(
                replica, sync, conn, client, session.id, target, progress, outcome
            )
            await flush_acks(replica, client, conn)
            if not again:
                drained = True
                break
        if target.resync and drained:
            removed = await replica.finish_resync(target)
            log.info("pull.resync_done", sync=sync.label, removed=removed)
        if lost:
            # The last session this cycle may start lost a page: its items were not
            # acknowledged and come again later, but until then rows are missing.
            # That is not a success (exit code, status).
            raise IncompletePull(
                f"a page was lost in the last of {sync.max_sessions} sessions of this "
                "cycle; its items come again in the next cycle"
            )
    return outcome


async def _drain(
    replica: Replica,
    sync: Sync,
    conn: Connection,
    client: PullConnector,
    session_id: str,
    target: PullTarget,
    progress: PullProgress,
    outcome: PullOutcome,
) -> tuple[bool, bool]:
    """Drain one session: whether another session should follow, and whether a page
    may have been lost (its items come only with a later session)."""
    pending = await replica.count_pending_acks(conn.name)
    again = lost = False
    empty = malformed = 0
    send, recv = anyio.create_memory_object_stream[_Fetched](1)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_fetch_pages, client, session_id, send)
            async with recv:
                async for raw in recv:
                    if isinstance(raw, BaseException):
                        raise raw
                    if isinstance(raw, _PageMayBeLost):
                        again = lost = True
                        continue
                    bad: ProtocolError | None = None
                    if isinstance(raw, _BadAnswer):
                        bad = raw.error
                    else:
                        try:
                            page, result = await replica.decode_and_apply(
                                target, functools.partial(_decode, client, raw)
                            )
                        except ProtocolError as e:
                            bad = e
                    if bad is not None:
                        # The server has moved past this page; its items were not
                        # acked, so a later session brings them again.
                        again = lost = True
                        malformed += 1
                        log.warning("pull.bad_page", error=str(bad), attempt=malformed)
                        if malformed > conn.max_retries:
                            raise ProtocolError(
                                f"{conn.name} keeps answering malformed pages"
                            ) from None
                        continue
                    malformed = 0
                    if page.count == 0 and not page.batch.failed_objects:
                        # Only a 204 ends a session: keep asking, more slowly, a while.
                        empty += 1
                        if empty >= MAX_EMPTY_PAGES:
                            raise ProtocolError(
                                f"{conn.name} answered {empty} empty pages in a row; "
                                "abandoning the session"
                            )
                        await anyio.sleep(EMPTY_PAGE_PAUSE * min(empty, 10))
                        continue
                    empty = 0
                    outcome.pages += 1
                    outcome.items += page.count
                    outcome.applied += result.inserted + result.updated + result.deleted
                    outcome.created += result.inserted
                    outcome.updated += result.updated
                    outcome.deleted += result.deleted
                    outcome.skipped += result.skipped
                    outcome.quarantined += result.quarantined
                    outcome.failed_objects += len(page.batch.failed_objects)
                    again = again or bool(page.batch.failed_objects)
                    progress.page(sync.label, page.count, page.count_left)
                    if result.new_columns:
                        log.info("schema.columns_added", sync=sync.label,
                                 columns=result.new_columns)  # fmt: skip
                    log.debug("pull.page", sync=sync.label, items=page.count,
                              left=page.count_left)  # fmt: skip
                    pending += result.ack_keys
                    if pending >= client.confirm_batch:
                        await flush_acks(replica, client, conn)
                        pending = 0
    except BaseExceptionGroup as group:
        # Callers match on the connector's error, not on the task group's wrapper.
        raise unwrap(group) from None
    return again, lost


def _decode(client: PullConnector, raw: bytes) -> tuple[PulledPage, PageBatch]:
    page = client.decode(raw)
    return page, page.batch


async def _fetch_pages(
    client: PullConnector,
    session_id: str,
    send: MemoryObjectSendStream[_Fetched],
) -> None:
    """Fetch page bodies ahead of the applier, until 204; errors are handed over, not
    raised. The applier decodes them (on the writer thread) and paces empty pages:
    with one page buffered, this stays at most a page or two ahead."""
    async with send:
        try:
            while True:
                try:
                    raw, lossy = await client.fetch(session_id)
                except ProtocolError as e:
                    # Not a page: the applier counts it with the malformed ones.
                    await send.send(_BadAnswer(e))
                    continue
                if lossy:
                    await send.send(PAGE_MAY_BE_LOST)
                if raw is None:
                    return
                await send.send(raw)
        except Exception as e:
            await send.send(e)
