"""Alerts on runs: raised once, resolved by a good run, thresholds, stale, on_alert."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from replicad.daemon.alerts import Alerts
from replicad.daemon.census import AlertRule
from replicad.daemon.config import Sync
from replicad.store import Replica, RunCounts


def sync_with(*rules: AlertRule, on_alert: tuple[str, ...] = (), direction: str = "push") -> Sync:
    return Sync("up", direction, "out", source="contact", object="c", alerts=rules,
                on_alert=on_alert)  # fmt: skip


async def open_alerts(replica: Replica) -> list[tuple[str, str]]:
    return [(t, m) for _s, t, _at, m in await replica.open_alerts()]


async def test_failed_run_is_raised_once_and_resolved(tmp_path: Path) -> None:
    """A failing sync raises failed_run once (not once per failure); a good run resolves it."""
    replica = await Replica.open(tmp_path / "r.db")
    try:
        await replica.register_sync("up", "push", "out")
        alerts = Alerts(replica)
        sync = sync_with(AlertRule("failed_run"))
        for _ in range(3):
            with pytest.raises(RuntimeError):
                async with alerts.run(sync):
                    raise RuntimeError("destination down")
        assert await open_alerts(replica) == [("failed_run", "push failed: destination down")]
        assert "1 alert(s) open (up: failed_run)" in alerts.summary()
        async with alerts.run(sync):
            pass
        assert await open_alerts(replica) == []
        rows = await replica.db.execute_fetchall("SELECT status FROM replicad_runs ORDER BY run")
        assert [r[0] for r in rows] == ["failed", "failed", "failed", "succeeded"]
    finally:
        await replica.close()


async def test_rejected_records_threshold(tmp_path: Path) -> None:
    """rejected_records opens at or above its share of a run's records, closes below."""
    replica = await Replica.open(tmp_path / "r.db")
    try:
        alerts = Alerts(replica)
        sync = sync_with(AlertRule("rejected_records", threshold_percent=25))
        async with alerts.run(sync) as run:
            run.counts = RunCounts(created=3, rejected=1)  # 25 %
        assert [t for t, _ in await open_alerts(replica)] == ["rejected_records"]
        async with alerts.run(sync) as run:
            run.counts = RunCounts(created=9, rejected=1)  # 10 %
        assert await open_alerts(replica) == []
    finally:
        await replica.close()


async def test_stale_and_on_alert_command(tmp_path: Path) -> None:
    """stale opens when no run succeeded for longer than ``after``; on_alert gets the
    alert as JSON on stdin; a failing command is only logged."""
    replica = await Replica.open(tmp_path / "r.db")
    seen = tmp_path / "seen.json"
    hook = tmp_path / "hook.py"
    hook.write_text(f"import sys\nopen({str(seen)!r}, 'w').write(sys.stdin.read())\n")
    try:
        await replica.register_sync("up", "push", "out")
        alerts = Alerts(replica)
        alerts.started -= 120
        idle = sync_with(AlertRule("stale", after=60))
        await alerts.check_stale([idle])  # a captured push without edits is idle, not stale
        assert await open_alerts(replica) == []
        sync = sync_with(
            AlertRule("stale", after=60), on_alert=(sys.executable, str(hook)), direction="pull"
        )
        await alerts.check_stale([sync])
        told = json.loads(seen.read_text())
        assert (told["type"], told["state"], told["sync"]) == ("stale", "raised", "up")
        assert "no successful pull since the daemon started" in told["message"]
        failing = sync_with(AlertRule("failed_run"), on_alert=(sys.executable, "-c", "exit(3)"))
        with pytest.raises(ValueError):
            async with alerts.run(failing):
                raise ValueError("x")
        assert ("failed_run", "push failed: x") in await open_alerts(replica)
    finally:
        await replica.close()
