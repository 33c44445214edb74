"""``replicad run``: the supervisor. One task group, one task per sync, until a signal.

- Pull syncs run at their interval, and at once on SIGUSR1.
- Push syncs are woken by watchfiles when the replica's files change (a local commit
  from another process), with no polling of the database while idle. A wake-up only
  probes the outbox (a read), so the daemon's own commits, which wake it too, never
  start work by themselves.
- A failure backs off with jitter (capped) in its own loop: a failing push never
  stops the pull, nor the reverse. A refused token pauses the sync until the config
  (or a token file) changes.
- The config file (watched, and on SIGHUP) is reloaded without a restart; a broken
  one is logged and the running config stays.
- SIGTERM/SIGINT: stop taking work, let the current page or batch commit or roll
  back, flush acks (bounded), exit 0. A second signal exits at once.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import structlog
from watchfiles import Change, awatch

from replicad.connectors.errors import AuthRefused, ConnectorError
from replicad.daemon.config import Config, ConfigError, Sync, load_config
from replicad.daemon.cycle_status import one_line
from replicad.daemon.engine import Engine, open_engine
from replicad.daemon.heartbeat import LoopState, Supervision, write_heartbeat
from replicad.daemon.notify import Notifier
from replicad.daemon.pull import flush_acks
from replicad.daemon.push import push_source
from replicad.daemon.sources import check_diffed_sources
from replicad.store import SourceError, as_corruption

log = structlog.get_logger("replicad.run")

SignalReceiver = AsyncIterator[int]
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)

BACKOFF_CAP = 300.0
PUSH_BACKOFF_BASE = 1.0
SHUTDOWN_FLUSH = 5.0
HEARTBEAT_EVERY = 5.0
STALE_CHECK_EVERY = 30.0
# Coalesce file events: a commit touches the WAL several times within milliseconds.
WATCH_STEP_MS = 10
WATCH_DEBOUNCE_MS = 50
# The shortest pause between two diffs of one source, seconds.
MIN_DIFF_GAP = 1.0
# Probes after a wake-up that found nothing (see Supervisor._wait_for_edits), seconds.
RECHECK_AFTER = (0.05, 0.25, 1.0, 3.0)


def backoff(base: float, failures: int, rng: random.Random) -> float:
    """Jittered exponential backoff (half to all of the step), capped."""
    step = min(BACKOFF_CAP, base * 2 ** min(failures - 1, 16))
    return rng.uniform(step / 2, step)


class Supervisor:
    """Runs every sync of an engine until stopped; reloads the config on change."""

    def __init__(self, engine: Engine, notifier: Notifier) -> None:
        self.engine = engine
        self.notifier = notifier
        self.state = Supervision(pid=os.getpid())
        self.wakeups: dict[str, anyio.Event] = {}
        self.pull_now = anyio.Event()
        self.reload_requested = anyio.Event()
        self.stopping = False
        self._rng = random.Random()
        self._diffed_at: dict[str, float] = {}

    async def run(self, received: SignalReceiver) -> None:
        """Until SIGTERM/SIGINT (arriving on ``received``)."""
        async with anyio.create_task_group() as root:
            root.start_soon(self._signals, received)
            root.start_soon(self._watch_replica)
            root.start_soon(self._watch_sources)
            root.start_soon(self._watch_config)
            root.start_soon(self._heartbeat)
            root.start_soon(self._stale_checks)
            first = True
            while not self.stopping:
                running = self.engine.push_syncs() + self.engine.pull_syncs()
                self.state.syncs = {s.label: LoopState(direction=s.direction) for s in running}
                async with anyio.create_task_group() as syncs:
                    for sync in running:
                        syncs.start_soon(self._loop, sync)
                    if first:
                        log.info("daemon.started", syncs=sorted(self.state.syncs))
                        first = False
                    # READY=1 after a reload too: it ends the RELOADING=1 state.
                    self.notifier.ready(self.state.summary())
                    await self.reload_requested.wait()
                    syncs.cancel_scope.cancel()
                if self.stopping:
                    break
                await self._apply_reload()
            await self._flush_acks()
            root.cancel_scope.cancel()
        log.info("daemon.stopped")

    # -- loops -------------------------------------------------------------------

    async def _loop(self, sync: Sync) -> None:
        failures = 0
        state = self.state.syncs[sync.label]
        while True:
            if sync.direction == "push" and failures == 0:
                if sync.diffed is not None:
                    await self._wait_for_source(sync)
                else:
                    await self._wait_for_edits(sync)
            state.busy()
            progress_before = state.progress
            try:
                if sync.direction == "push":
                    await self.engine.push(sync, state.batch_done)
                else:
                    await self.engine.pull(sync, state)
            except AuthRefused as e:
                state.paused(
                    f"token refused: {one_line(e)}; fix the token or config (reloaded on change)"
                )
                log.error(f"{sync.direction}.auth_refused", sync=sync.label, error=str(e))
                await anyio.sleep_forever()
            except Exception as e:
                corrupt = as_corruption(e)
                if corrupt is not None:
                    # Never sync into (or acknowledge from) a damaged file: stop.
                    log.error("replica.corrupt", sync=sync.label, error=str(corrupt))
                    raise corrupt from e
                failures = failures_after(failures, state.progress > progress_before)
                delay = backoff(
                    sync.interval if sync.direction == "pull" else PUSH_BACKOFF_BASE,
                    failures,
                    self._rng,
                )
                expected = isinstance(e, ConnectorError | SourceError)
                state.failed(one_line(e), delay)
                log.warning(
                    f"{sync.direction}.failed", sync=sync.label, error=one_line(e),
                    retry_in=round(delay, 1), exc_info=None if expected else e,
                )  # fmt: skip
                await anyio.sleep(delay)
                continue
            failures = 0
            if sync.direction == "pull":
                state.idle(sync.interval)
                with anyio.move_on_after(sync.interval):
                    await self.pull_now.wait()
            else:
                state.idle(None)

    async def _wait_for_edits(self, sync: Sync) -> None:
        """Return once the sync's table has outbox work; sleeps on file events.

        After a wake-up that finds nothing, the outbox is probed a few more times: a
        commit writes the WAL (the file event) before its fsync and only then becomes
        visible, through the -shm index, which raises no event. A probe right after
        the event can miss a slow commit, and nothing else would wake us for it.
        """
        rechecks: list[float] = []
        while True:
            event = self.wakeups.setdefault(sync.label, anyio.Event())
            if await self.engine.replica.has_outbox_work(push_source(sync)):
                return
            if rechecks:
                timeout: float | None = rechecks.pop(0)
            else:
                # Idle: only a file event wakes us; without file events (the watcher
                # failed), poll at the interval.
                timeout = None if self.state.watching else sync.interval
            with anyio.move_on_after(timeout):
                await event.wait()
            if event.is_set():
                self.wakeups.pop(sync.label, None)
                rechecks = list(RECHECK_AFTER)

    async def _wait_for_source(self, sync: Sync) -> None:
        """A diffed source is read every ``interval``, and soon after another app's
        file changes (never more than once a second: a diff reads the whole source)."""
        last = self._diffed_at.get(sync.label)
        if last is not None:
            event = self.wakeups.setdefault(sync.label, anyio.Event())
            with anyio.move_on_after(max(0.0, last + sync.interval - time.monotonic())):
                await event.wait()
            self.wakeups.pop(sync.label, None)
            await anyio.sleep(max(0.0, last + MIN_DIFF_GAP - time.monotonic()))
        self._diffed_at[sync.label] = time.monotonic()

    def _wake_pushers(self) -> None:
        """A replica change wakes the captured push syncs. Not the diffed ones: the
        daemon's own writes change the replica all the time, and a diff reads its
        whole source (one on the replica runs every interval; one on another file is
        woken by that file's events)."""
        diffed = {s.label for s in self.engine.push_syncs() if s.diffed is not None}
        for label in [x for x in self.wakeups if x not in diffed]:
            self.wakeups.pop(label).set()

    # -- watchers ----------------------------------------------------------------

    async def _watch_replica(self) -> None:
        db = self.engine.replica.path.resolve()
        names = {db.name, db.name + "-wal"}

        def relevant(_change: Change, path: str) -> bool:
            return Path(path).name in names

        try:
            self.state.watching = True
            async for _ in awatch(
                db.parent, watch_filter=relevant, step=WATCH_STEP_MS,
                debounce=WATCH_DEBOUNCE_MS, recursive=False,
            ):  # fmt: skip
                self._wake_pushers()
        except Exception as e:  # inotify limits, odd filesystems
            self.state.watching = False
            self._wake_pushers()
            log.warning("watch.failed", path=str(db.parent), error=str(e))

    async def _watch_sources(self) -> None:
        """File events on other apps' databases wake the diffed syncs that read them."""
        readers: dict[Path, list[str]] = {}
        for s in self.engine.push_syncs():
            if s.diffed is not None and s.diffed.database is not None:
                readers.setdefault(s.diffed.database.resolve(), []).append(s.label)
        if not readers:
            return
        names = {
            p.parent / (p.name + suffix): labels
            for p, labels in readers.items()
            for suffix in ("", "-wal", "-journal")
        }

        def relevant(_change: Change, path: str) -> bool:
            return Path(path) in names

        try:
            async for changes in awatch(
                *{p.parent for p in readers}, watch_filter=relevant, step=WATCH_STEP_MS,
                debounce=WATCH_DEBOUNCE_MS, recursive=False,
            ):  # fmt: skip
                for _change, path in changes:
                    for label in names.get(Path(path), []):
                        event = self.wakeups.pop(label, None)
                        if event is not None:
                            event.set()
        except Exception as e:
            log.warning("watch.failed", what="diffed sources", error=str(e))

    async def _watch_config(self) -> None:
        config = self.engine.config
        watched = {config.path.resolve()}
        for conn in config.connections.values():
            if conn.token_file is not None:
                watched.add(conn.token_file.resolve())
        folders = {p.parent for p in watched}

        def relevant(_change: Change, path: str) -> bool:
            return Path(path).resolve() in watched

        try:
            async for _ in awatch(*folders, watch_filter=relevant, recursive=False):
                log.info("config.changed", path=str(config.path))
                self.reload_requested.set()
        except Exception as e:
            log.warning("watch.failed", path=str(config.path), error=str(e))

    async def _apply_reload(self) -> None:
        """Load the config again; a broken one is logged and the old one kept."""
        self.reload_requested = anyio.Event()
        self.notifier.reloading()
        old = self.engine.config
        try:
            new = await anyio.to_thread.run_sync(load_config, old.path)
            if new.replica_path.resolve() != old.replica_path.resolve():
                raise ConfigError("replica.path: changing the replica needs a restart")
        except ConfigError as e:
            log.error("config.rejected", error=str(e), keeping="the running config")
            new = old
        try:
            await self.engine.reconfigure(new)
        except ConfigError as e:
            # Only the replica can tell (a push source missing, a pull's mapping that
            # would move stored columns before a resync): keep the running config.
            log.error("config.rejected", error=str(e), keeping="the running config")
            new = old
            await self.engine.reconfigure(old)
        log.info("config.reloaded", syncs=sorted(new.syncs))

    # -- signals, heartbeat, shutdown ----------------------------------------------

    async def _signals(self, received: SignalReceiver) -> None:
        async for signum in received:
            if signum == signal.SIGHUP:
                log.info("config.reload_requested", signal="SIGHUP")
                self.reload_requested.set()
            elif signum == signal.SIGUSR1:
                self.pull_now.set()
                self.pull_now = anyio.Event()
            elif self.stopping:
                log.warning("daemon.exit_now", signal=signal.Signals(signum).name)
                os._exit(1)
            else:
                log.info("daemon.stopping", signal=signal.Signals(signum).name)
                self.notifier.stopping()
                self.stopping = True
                self.reload_requested.set()  # ends the syncs' task group

    async def _heartbeat(self) -> None:
        interval = self.notifier.watchdog_interval
        tick = min(interval, 1.0) if interval else 1.0
        last_file = 0.0
        last_dog = 0.0
        alerts = self.engine.alerts
        while True:
            now = time.monotonic()
            summary = "; ".join(x for x in (self.state.summary(), alerts.summary()) if x)
            self.notifier.status(summary)
            due = interval and now - last_dog >= interval and self.state.healthy(now)
            # A ping that could not go (a full socket) is tried again next tick.
            if due and self.notifier.watchdog():
                last_dog = now
            if now - last_file >= HEARTBEAT_EVERY:
                try:
                    await anyio.to_thread.run_sync(
                        write_heartbeat, self.engine.replica.path, self.state
                    )
                except OSError as e:  # a full disk must not take the syncs down
                    log.warning("heartbeat.failed", error=str(e))
                last_file = now
            await anyio.sleep(tick)

    async def _stale_checks(self) -> None:
        """The ``stale`` alerts, in their own task: a check waits for the replica's
        writer (and runs on_alert commands), which must never hold up the heartbeat
        and its watchdog pings."""
        while True:
            await anyio.sleep(STALE_CHECK_EVERY)
            try:
                await self.engine.alerts.check_stale(
                    self.engine.push_syncs() + self.engine.pull_syncs()
                )
            except Exception as e:  # a busy replica: next time
                log.warning("alert.check_failed", error=str(e))

    async def _flush_acks(self) -> None:
        """Send committed acks before exiting, if the network allows, in bounded time."""
        with anyio.move_on_after(SHUTDOWN_FLUSH, shield=True):
            for sync in self.engine.pull_syncs():
                conn = self.engine.config.connections[sync.connection]
                try:
                    client = await self.engine.client(conn)
                    await flush_acks(self.engine.replica, client, conn)
                except Exception as e:
                    log.info("pull.acks_kept", sync=sync.label, error=str(e))


def failures_after(failures: int, progressed: bool) -> int:
    """The failure count after a failed cycle: a cycle that got pages or batches
    through before failing (sustained but partial faults) starts its backoff over
    instead of doubling it."""
    return 1 if progressed else failures + 1


async def run_daemon(config: Config) -> None:
    """Run until a signal arrives; the current page commits or rolls back, then exit."""
    notifier = Notifier.from_env()

    def waiting(what: str) -> None:
        log.warning("replica.busy", waiting=what)
        notifier.status(what)
        # Still starting: keep systemd from giving up on the start while an app holds
        # the lock (the next wait extends it again).
        notifier.send("EXTEND_TIMEOUT_USEC=90000000")

    # The receiver exists before anything else: a SIGTERM while the replica opens
    # (an app holding its lock, a long integrity check) is a clean stop, exit 0, not
    # the default action's death by signal.
    try:
        with anyio.open_signal_receiver(*SIGNALS) as received:
            for problem in await anyio.to_thread.run_sync(check_diffed_sources, config):
                # That sync's runs fail (and alert) until the source or config is fixed.
                log.error("config.source_mismatch", error=str(problem))
            async with AsyncExitStack() as stack:
                engine = await _start(stack, config, waiting, received)
                if engine is None:
                    return
                try:
                    await Supervisor(engine, notifier).run(received)
                finally:
                    # Only the process that holds the replica owns its heartbeat: one
                    # refused at open (another daemon runs) must not remove it.
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(_remove_heartbeat, config.replica_path)
    finally:
        notifier.close()


async def _start(
    stack: AsyncExitStack,
    config: Config,
    waiting: Callable[[str], None],
    received: SignalReceiver,
) -> Engine | None:
    """Open the engine into ``stack``; None when SIGTERM/SIGINT came first."""
    engine: Engine | None = None
    async with anyio.create_task_group() as tg:
        starting = anyio.CancelScope()

        async def stop_on_signal() -> None:
            async for signum in received:
                if signum in (signal.SIGTERM, signal.SIGINT):
                    log.info("daemon.stopping", signal=signal.Signals(signum).name)
                    starting.cancel()
                    return
                # SIGHUP/SIGUSR1 while starting: the config is read once started anyway.

        tg.start_soon(stop_on_signal)
        with starting:
            engine = await stack.enter_async_context(open_engine(config, waiting, daemon=True))
        tg.cancel_scope.cancel()
    return engine


def _remove_heartbeat(replica: Path) -> None:
    from replicad.daemon.heartbeat import heartbeat_path

    heartbeat_path(replica).unlink(missing_ok=True)
