"""The push engine: one cycle of a push sync.

Take a batch from the outbox (an unconfirmed in-flight batch first, resent exactly as
before) → send it → record each entry's outcome, until the outbox of the sync's table
is empty or the destination fails. An entry without an outcome stays in flight, so a
stop, a crash or a lost answer at any moment leads to the same batch being sent
again with the same tracking id and internal ids: never a second remote record.

Up to ``OVERLAP`` batches are out at once: over a real network each waits a round trip
or two, and the protocols key every entry by its own internal id, so batches need not
wait for each other. The edits of one row still go in order: a row with an entry out
has its next one wait (``store.outbox.take_batch``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import anyio
import structlog

from replicad.connectors.errors import ConnectorError
from replicad.connectors.push_model import (
    Operation,
    PushBatch,
    PushConnector,
    PushItem,
    PushOutcome,
    PushResult,
)
from replicad.daemon.config import Sync
from replicad.daemon.cycle_status import recorded_cycle
from replicad.daemon.exits import unwrap
from replicad.daemon.mapping import map_item, mapped_columns
from replicad.store import (
    Association,
    DiffSpec,
    OutboxBatch,
    PushSource,
    Replica,
    RunCounts,
    SourceError,
)

log = structlog.get_logger("replicad.push")

# Batches sent at once by one push cycle.
OVERLAP = 4


@dataclass(slots=True)
class PushReport:
    """What a push cycle did."""

    batches: int = 0
    sent: int = 0
    confirmed: int = 0
    rejected: int = 0
    merged: int = 0
    not_found: int = 0


def push_source(sync: Sync) -> PushSource:
    """The store's view of a push sync."""
    return PushSource(
        sync.label,
        sync.outbox_table,
        sync.conflict,
        tuple(Association(a.column, a.source, a.object) for a in sync.associations),
        sync.operation,
        sync.updates_need_id,
        sync.creates_may_merge,
    )


def diff_spec(sync: Sync) -> DiffSpec:
    """The store's view of a diffed source."""
    assert sync.diffed is not None
    key = next(m.column for m in sync.mappings if m.primary)
    assert key is not None
    return DiffSpec(
        sync.label,
        sync.diffed.query,
        sync.diffed.database,
        key,
        mapped_columns(sync),
        sync.operation,
        sync.high_water_mark,
    )


def to_wire(batch: OutboxBatch, sync: Sync) -> tuple[PushBatch, list[PushOutcome]]:
    """An outbox batch as the connectors take it (mapped), and the outcomes of the
    entries with nothing to send (confirmed at once)."""
    items: list[PushItem] = []
    nothing: list[PushOutcome] = []
    for item in batch.items:
        mapped = map_item(item, sync)
        if mapped is None:
            nothing.append(PushOutcome(item.entry, id=item.id))
        else:
            items.append(mapped)
    operation = cast(Operation, sync.operation)
    wire = PushBatch(
        batch.tracking_id, sync.object, tuple(items), batch.resend, operation, sync.key_field
    )
    return wire, nothing


async def push_cycle(
    replica: Replica,
    sync: Sync,
    connector: PushConnector,
    on_batch: Callable[[], None] | None = None,
    run: RunCounts | None = None,
) -> PushReport:
    """Push the sync's outbox until it is empty; raises the destination's failure.

    Outcomes received before a failure are recorded first: a rejection or a
    confirmation is never lost to a later error. Only the connector rejects entries
    (an explicit refusal of the item); a failure without outcomes leaves the batch in
    flight, to be resent with the same tracking id and internal ids.
    """
    report = PushReport()
    counts_out = run if run is not None else RunCounts()
    source = push_source(sync)
    await replica.sync_started(sync.label, None)
    async with recorded_cycle(replica, sync.label):
        if sync.diffed is not None:
            try:
                found = await replica.diff_source(diff_spec(sync))
            except SourceError as e:
                raise SourceError(f"{sync.shown_as}: {e}") from None
            counts_out.rejected += found.invalid
            if found.rows or found.invalid:
                log.info(
                    "push.diffed", sync=sync.label, changed=found.rows, created=found.created,
                    updated=found.updated, deleted=found.deleted, invalid=found.invalid,
                )  # fmt: skip
        busy: set[str] = set()
        failed: list[Exception] = []

        async def sender() -> None:
            # After a failure no sender takes another batch, but those out finish:
            # cancelled mid-send, a create would have to be checked (or, without a
            # way to look it up, wait in doubt) when it is sent again.
            while (
                not failed
                and (batch := await replica.take_push_batch(source, sync.batch_size, busy))
                is not None
            ):
                try:
                    await _send(replica, sync, connector, source, batch, report, counts_out,
                                on_batch)  # fmt: skip
                except Exception as e:
                    failed.append(e)
                finally:
                    busy.discard(batch.tracking_id)

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(OVERLAP):
                    tg.start_soon(sender)
        except BaseExceptionGroup as group:
            # Callers match on the destination's error, not on the task group's wrapper.
            raise unwrap(group) from None
        if failed:
            raise failed[0]
    return report


async def _send(
    replica: Replica,
    sync: Sync,
    connector: PushConnector,
    source: PushSource,
    batch: OutboxBatch,
    report: PushReport,
    counts_out: RunCounts,
    on_batch: Callable[[], None] | None,
) -> None:
    """Send one batch and record its outcomes; raises the destination's failure."""
    wire, nothing = to_wire(batch, sync)
    result = await connector.push(wire) if wire.items else PushResult()
    # Outcomes received are recorded even if the daemon is stopping: dropping a
    # confirmation would resend (and for CDM, re-check) an entry that arrived.
    with anyio.CancelScope(shield=True):
        counts = await replica.record_push(source.table, nothing + result.outcomes)
    counts_out.created += counts.created
    counts_out.updated += counts.updated
    counts_out.deleted += counts.deleted
    counts_out.rejected += counts.rejected
    counts_out.not_found += counts.not_found
    report.batches += 1
    if on_batch is not None and counts.confirmed + counts.rejected:
        on_batch()  # progress: a batch without outcomes is no progress
    report.sent += len(wire.items)
    report.confirmed += counts.confirmed
    report.not_found += counts.not_found
    report.rejected += counts.rejected
    report.merged += counts.merged
    log.info(
        "push.batch", sync=sync.label, tracking_id=batch.tracking_id, resend=batch.resend,
        items=len(wire.items), confirmed=counts.confirmed, rejected=counts.rejected,
    )  # fmt: skip
    for outcome in result.outcomes:
        if outcome.rejected is not None:
            log.warning(
                "push.rejected", sync=sync.label, entry=outcome.entry, reason=outcome.rejected
            )
    if result.error is not None:
        raise result.error
    if len(result.outcomes) + len(nothing) < len(batch.items):
        # Without this the same batch would be resent forever.
        raise ConnectorError(
            f"push {sync.label}: the destination answered for {len(result.outcomes)} "
            f"of {len(wire.items)} entries"
        )
