"""How a pull or push cycle ends up in ``replicad_syncs``: success, failure or stop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import structlog

from replicad.daemon.logs import redact
from replicad.store import Replica

log = structlog.get_logger("replicad.status")


def one_line(e: BaseException) -> str:
    """An error as one short line for status, without credentials (it is stored)."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return redact(text)[:500]


# How many times a failure or a stop is written while an app holds the write lock
# (each attempt waits out the replica's busy timeout first), and the pause between.
RECORD_ATTEMPTS = 3
RECORD_PAUSE = 2.0
STOP_RECORD_TIMEOUT = 5.0


@asynccontextmanager
async def recorded_cycle(replica: Replica, sync: str) -> AsyncIterator[None]:
    """Record the cycle's outcome; a stop (SIGTERM, reload) is not a failure: the next
    start resumes from what was committed. The record is shielded from that stop."""
    try:
        yield
    except BaseException as e:
        with anyio.CancelScope(shield=True):
            if isinstance(e, anyio.get_cancelled_exc_class()):
                # Stopping: one short try (the unit's stop timeout is 30 s); a state
                # left "syncing" reads as "interrupted" once the process is gone.
                with anyio.move_on_after(STOP_RECORD_TIMEOUT):
                    await _record(lambda: replica.sync_stopped(sync), sync, attempts=1)
            else:
                message = one_line(e)
                await _record(lambda: replica.sync_finished(sync, message), sync)
        raise
    await replica.sync_finished(sync, None)


async def _record(
    write: Callable[[], Awaitable[None]], sync: str, attempts: int = RECORD_ATTEMPTS
) -> None:
    """Write a failure or a stop, however busy the replica is: an app holding the write
    lock must not leave "syncing" behind. Never raises: the cycle's own error is what
    the caller must see."""
    for attempt in range(1, attempts + 1):
        try:
            await write()
            return
        except Exception as e:  # "database is locked", a full disk: try again, then log
            log.warning("status.not_recorded", sync=sync, error=str(e), attempt=attempt)
            if attempt < attempts:
                await anyio.sleep(RECORD_PAUSE)
    log.error("status.not_recorded", sync=sync, gave_up=True)
