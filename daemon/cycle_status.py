"""How a pull or push cycle ends up in ``replicad_syncs``: success, failure or stop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from replicad.daemon.logs import redact
from replicad.store import Replica


def one_line(e: BaseException) -> str:
    """An error as one short line for status, without credentials (it is stored)."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return redact(text)[:500]


@asynccontextmanager
async def recorded_cycle(replica: Replica, sync: str) -> AsyncIterator[None]:
    """Record the cycle's outcome; a stop (SIGTERM, reload) is not a failure: the next
    start resumes from what was committed. The record is shielded from that stop."""
    try:
        yield
    except BaseException as e:
        with anyio.CancelScope(shield=True):
            if isinstance(e, anyio.get_cancelled_exc_class()):
                await replica.sync_stopped(sync)
            else:
                await replica.sync_finished(sync, one_line(e))
        raise
    await replica.sync_finished(sync, None)
