"""Runs and alerts (CONTRACT §7): every cycle kept in ``replicad_runs``, Census's
``alert_attributes`` raised and resolved on them.

An alert is raised once (it stays open until resolved, so a sync failing every
minute does not alert every minute), logged as ``alert.raised`` at error priority and
``alert.resolved`` at notice priority, shown by ``status`` and the systemd status
line, and handed to the sync's ``on_alert`` command as JSON on stdin. That command
runs with a timeout; its failure is logged and never affects the sync.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import structlog

from replicad.daemon.config import Sync
from replicad.daemon.cycle_status import one_line
from replicad.daemon.push import push_source
from replicad.store import Replica, Run, RunCounts
from replicad.store.outbox import utcnow

log = structlog.get_logger("replicad.alerts")

ON_ALERT_TIMEOUT = 10.0
# Recording a run and acting on its alerts (on_alert commands included), at most.
RECORD_BUDGET = 60.0


@dataclass(slots=True)
class RunRecorder:
    """Counts of the cycle under way, filled in by the pull or push engine."""

    counts: RunCounts = field(default_factory=RunCounts)


class Alerts:
    """Raises and resolves a supervisor's alerts; keeps the open ones for status."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.open: dict[tuple[str, str], str] = {}
        self.started = time.time()

    async def load(self) -> None:
        """The alerts still open from before a restart."""
        for sync, type_, _at, message in await self.replica.open_alerts():
            self.open[(sync, type_)] = message

    def summary(self) -> str:
        """A few words for the systemd status line ('' with no open alert)."""
        if not self.open:
            return ""
        names = ", ".join(f"{s}: {t}" for s, t in sorted(self.open))
        return f"{len(self.open)} alert(s) open ({names})"

    @asynccontextmanager
    async def run(self, sync: Sync) -> AsyncIterator[RunRecorder]:
        """Record the cycle in the body as a run, then evaluate the sync's alerts. A
        stop (cancellation) is recorded as a stopped run and raises no alert."""
        recorder = RunRecorder()
        started = utcnow()
        status, error = "succeeded", None
        try:
            yield recorder
        except BaseException as e:
            stopped = isinstance(e, anyio.get_cancelled_exc_class())
            status, error = ("stopped", None) if stopped else ("failed", one_line(e))
            raise
        finally:
            c = recorder.counts
            c.processed = c.created + c.updated + c.deleted + c.rejected + c.not_found
            run = Run(sync.label, sync.direction, started, utcnow(), status, c, error)
            # Shielded from a stop, bounded: the replica's writer may be busy (a long
            # diff), and an on_alert command takes up to its own timeout.
            with anyio.CancelScope(shield=True), anyio.move_on_after(RECORD_BUDGET) as budget:
                try:
                    await self.replica.record_run(run)
                    if status != "stopped":
                        await self.after_run(sync, run)
                except Exception as e:  # never hide the cycle's own outcome
                    log.warning("run.not_recorded", sync=sync.label, error=str(e))
            if budget.cancelled_caught:
                log.warning("run.not_recorded", sync=sync.label, error="timed out")

    async def after_run(self, sync: Sync, run: Run) -> None:
        """Raise or resolve the run-based alerts of the sync."""
        for rule in sync.alerts:
            if rule.type == "failed_run":
                if run.status == "failed":
                    await self.raise_(sync, "failed_run", f"{sync.direction} failed: {run.error}")
                else:
                    await self.resolve(sync, "failed_run")
            elif rule.type == "rejected_records" and run.status == "succeeded":
                c = run.counts
                if c.processed == 0:
                    continue
                pct = 100.0 * c.rejected / c.processed
                if pct >= rule.threshold_percent:
                    await self.raise_(
                        sync,
                        "rejected_records",
                        f"{c.rejected} of {c.processed} records rejected or invalid "
                        f"({pct:.0f} %, threshold {rule.threshold_percent:g} %)",
                    )
                else:
                    await self.resolve(sync, "rejected_records")

    async def check_stale(self, syncs: list[Sync]) -> None:
        """``stale``: no successful cycle for longer than the rule's ``after`` (for a
        captured push: while edits wait)."""
        now = time.time()
        for sync in syncs:
            for rule in sync.alerts:
                if rule.type != "stale":
                    continue
                # A captured table's push runs only when there are edits: idle is not
                # stale; edits waiting without a successful run are.
                captured = sync.direction == "push" and sync.diffed is None
                if captured and not await self.replica.has_outbox_work(push_source(sync)):
                    await self.resolve(sync, "stale")
                    continue
                last = await self.replica.last_success(sync.label)
                since = _epoch(last) if last else self.started
                if now - since > rule.after:
                    when = f"since {last}" if last else "since the daemon started"
                    await self.raise_(sync, "stale", f"no successful {sync.direction} {when}")
                else:
                    await self.resolve(sync, "stale")

    async def raise_(self, sync: Sync, type_: str, message: str) -> None:
        """Open an alert (once) and tell the world."""
        if not await self.replica.raise_alert(sync.label, type_, message):
            return
        self.open[(sync.label, type_)] = message
        log.error("alert.raised", sync=sync.label, type=type_, message=message)
        await self._command(sync, {"state": "raised", "type": type_, "message": message})

    async def resolve(self, sync: Sync, type_: str) -> None:
        """Close an open alert of that type, if any."""
        message = await self.replica.resolve_alert(sync.label, type_)
        self.open.pop((sync.label, type_), None)
        if message is None:
            return
        log.info("alert.resolved", sync=sync.label, type=type_, syslog_priority="notice")
        await self._command(sync, {"state": "resolved", "type": type_, "message": message})

    async def _command(self, sync: Sync, alert: dict[str, Any]) -> None:
        if not sync.on_alert:
            return
        body = {"sync": sync.label, "label": sync.name or sync.label, "at": utcnow(), **alert}
        data = json.dumps(body).encode()
        try:
            with anyio.fail_after(ON_ALERT_TIMEOUT):
                done = await anyio.run_process(list(sync.on_alert), input=data, check=False)
            if done.returncode != 0:
                log.warning(
                    "alert.command_failed", sync=sync.label, code=done.returncode,
                    stderr=done.stderr.decode(errors="replace")[-300:],
                )  # fmt: skip
        except TimeoutError:
            log.warning("alert.command_failed", sync=sync.label, error="timed out")
        except OSError as e:
            log.warning("alert.command_failed", sync=sync.label, error=str(e))


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
