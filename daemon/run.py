"""``replicad run``: repeat each sync's cycle at its interval until SIGTERM/SIGINT."""

from __future__ import annotations

import signal

import anyio
import structlog

from connectors.errors import ConnectorError
from daemon.config import Config, Sync
from daemon.engine import Engine, open_engine

log = structlog.get_logger("replicad.run")


async def run_daemon(config: Config) -> None:
    """Run until a signal arrives; the current page commits or rolls back, then exit."""
    async with open_engine(config) as engine, anyio.create_task_group() as tg:
        tg.start_soon(_wait_for_signal, tg.cancel_scope)
        syncs = engine.push_syncs() + engine.pull_syncs()
        for sync in syncs:
            tg.start_soon(_sync_loop, engine, sync)
        log.info("daemon.started", syncs=[s.label for s in syncs])
    log.info("daemon.stopped")


async def _wait_for_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("daemon.stopping", signal=signal.Signals(signum).name)
            scope.cancel()
            return


async def _sync_loop(engine: Engine, sync: Sync) -> None:
    # A push failure never stops the pull and vice versa: each sync has its own loop.
    failures = 0
    while True:
        try:
            if sync.direction == "push":
                await engine.push(sync)
            else:
                await engine.pull(sync)
            failures = 0
            delay = sync.interval
        except Exception as e:
            # A failed cycle is recorded in status; the loop backs off and tries again
            # rather than taking the daemon down (a later cycle resumes where it left).
            failures += 1
            delay = min(300.0, sync.interval * (2 ** min(failures - 1, 8)))
            expected = isinstance(e, ConnectorError)
            log.warning(
                f"{sync.direction}.failed", sync=sync.label, error=str(e), retry_in=delay,
                exc_info=None if expected else e,
            )  # fmt: skip
        await anyio.sleep(delay)
