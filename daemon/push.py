"""The push engine: one cycle of a push sync.

Take a batch from the outbox (an unconfirmed in-flight batch first, resent exactly as
before) → send it → record each entry's outcome, until the outbox of the sync's table
is empty or the destination fails. An entry without an outcome stays in flight, so a
stop, a crash or a lost answer at any moment leads to the same batch being sent
again with the same tracking id and internal ids: never a second remote record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import anyio
import structlog

from replicad.connectors.errors import ConnectorError
from replicad.connectors.push_model import PushBatch, PushConnector
from replicad.daemon.config import Sync
from replicad.daemon.cycle_status import recorded_cycle
from replicad.store import Association, OutboxBatch, PushSource, Replica

log = structlog.get_logger("replicad.push")


@dataclass(slots=True)
class PushReport:
    """What a push cycle did."""

    batches: int = 0
    sent: int = 0
    confirmed: int = 0
    rejected: int = 0
    merged: int = 0


def push_source(sync: Sync) -> PushSource:
    """The store's view of a push sync."""
    return PushSource(
        sync.label,
        sync.source,
        sync.conflict,
        tuple(Association(a.column, a.source, a.object) for a in sync.associations),
    )


def to_wire(batch: OutboxBatch, obj: str) -> PushBatch:
    """An outbox batch as the connectors take it, for the destination type ``obj``."""
    return PushBatch(batch.tracking_id, obj, batch.items, batch.resend)


async def push_cycle(
    replica: Replica,
    sync: Sync,
    connector: PushConnector,
    on_batch: Callable[[], None] | None = None,
) -> PushReport:
    """Push the sync's outbox until it is empty; raises the destination's failure.

    Outcomes received before a failure are recorded first: a rejection or a
    confirmation is never lost to a later error. Only the connector rejects entries
    (an explicit refusal of the item); a failure without outcomes leaves the batch in
    flight, to be resent with the same tracking id and internal ids.
    """
    report = PushReport()
    source = push_source(sync)
    await replica.sync_started(sync.label, None)
    async with recorded_cycle(replica, sync.label):
        while (batch := await replica.take_push_batch(source, sync.batch_size)) is not None:
            wire = to_wire(batch, sync.object)
            result = await connector.push(wire)
            # Outcomes received are recorded even if the daemon is stopping: dropping a
            # confirmation would resend (and for CDM, re-check) an entry that arrived.
            with anyio.CancelScope(shield=True):
                counts = await replica.record_push(sync.source, result.outcomes)
            report.batches += 1
            if on_batch is not None and counts.confirmed + counts.rejected:
                on_batch()  # progress: a batch without outcomes is no progress
            report.sent += len(wire.items)
            report.confirmed += counts.confirmed
            report.rejected += counts.rejected
            report.merged += counts.merged
            log.info(
                "push.batch", sync=sync.label, tracking_id=batch.tracking_id, resend=batch.resend,
                items=len(wire.items), confirmed=counts.confirmed, rejected=counts.rejected,
            )  # fmt: skip
            for outcome in result.outcomes:
                if outcome.rejected is not None:
                    log.warning(
                        "push.rejected", sync=sync.label, entry=outcome.entry,
                        reason=outcome.rejected,
                    )  # fmt: skip
            if result.error is not None:
                raise result.error
            if len(result.outcomes) < len(wire.items):
                # Without this the same batch would be resent forever.
                raise ConnectorError(
                    f"push {sync.label}: the destination answered for {len(result.outcomes)} "
                    f"of {len(wire.items)} entries"
                )
    return report
