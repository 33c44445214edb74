"""What the running daemon is doing: per-loop state, health, and the heartbeat file.

The supervisor's loops record their activity here. It feeds systemd's ``STATUS=``
line, the watchdog (a loop stuck in one step stops the ``WATCHDOG=1`` pings, so
systemd restarts the daemon; waiting out a backoff is healthy), and a small JSON file
beside the replica that ``replicad status`` reads to show liveness, current activity
and the next scheduled run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from replicad.daemon.logs import redact
from replicad.store.lock import private_mode

# A healthy step touches its loop at least this often: a page, a batch, or the end
# of a request's bounded retries. The worst healthy case is a remote asking to wait
# (Retry-After, honoured up to 300 s) on each of six retries, plus 30 s timeouts:
# about 33 minutes. Waiting that out is healthy; beyond it, the loop is stuck.
STUCK_AFTER = 2400.0


def heartbeat_path(replica: Path) -> Path:
    """The heartbeat file of a replica."""
    return replica.with_name(replica.name + ".daemon.json")


def _iso(seconds_from_now: float) -> str:
    at = datetime.now(UTC) + timedelta(seconds=seconds_from_now)
    return at.isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(slots=True)
class LoopState:
    """One sync loop's activity (also its pull progress sink)."""

    direction: str
    activity: str = "starting"
    busy_since: float | None = None
    touched: float = field(default_factory=time.monotonic)
    next_run: float | None = None  # monotonic
    last_success: float | None = None
    last_error: str | None = None
    total: int | None = None
    done: int = 0
    # Pages and batches committed since the daemon started: a failed cycle that moved
    # this forward made progress, and its backoff starts over.
    progress: int = 0

    def busy(self) -> None:
        """A cycle starts."""
        self.activity = "pulling" if self.direction == "pull" else "pushing"
        self.busy_since = self.touched = time.monotonic()
        self.next_run = None

    def touch(self) -> None:
        """The cycle is alive."""
        self.touched = time.monotonic()

    def batch_done(self) -> None:
        """A push batch's outcomes were recorded."""
        self.progress += 1
        self.touch()

    def session(self, sync: str, total: int | None) -> None:
        """A pull session started (PullProgress)."""
        self.total, self.done = total, 0
        self.touch()

    def page(self, sync: str, items: int, count_left: int | None) -> None:
        """A page was committed (PullProgress)."""
        self.done += items
        self.progress += 1
        self.activity = "pulling"
        self.touch()

    def waiting(self, sync: str, seconds: float, items_per_second: float) -> None:
        """The next request waits for the rate budget (PullProgress): a planned
        silence, so the loop counts as alive until it ends."""
        self.activity = f"paced by the rate budget (~{items_per_second:.0f} items/s)"
        self.touched = time.monotonic() + seconds

    def idle(self, next_in: float | None) -> None:
        """The cycle succeeded; the next one runs in ``next_in`` s (None: on edits)."""
        now = time.monotonic()
        self.activity = "idle"
        self.busy_since = None
        self.last_success = now
        self.last_error = None
        self.total = None
        self.next_run = now + next_in if next_in is not None else None

    def failed(self, error: str, retry_in: float) -> None:
        """The cycle failed; it is retried after a backoff."""
        self.activity = "backing off"
        self.busy_since = None
        self.last_error = redact(error.splitlines()[0])[:300] if error else "error"
        self.next_run = time.monotonic() + retry_in

    def paused(self, reason: str) -> None:
        """Paused until the config changes (a refused token)."""
        self.activity = "paused"
        self.busy_since = None
        self.last_error = reason
        self.next_run = None

    def stuck(self, now: float) -> bool:
        """Busy in one step for too long."""
        return self.busy_since is not None and now - self.touched > STUCK_AFTER

    def describe(self, label: str, now: float) -> str:
        """A few words for the STATUS= line."""
        if self.activity == "pulling" and self.total:
            pct = min(100, self.done * 100 // max(self.total, 1))
            return f"{label}: pulling {pct}%"
        if self.activity == "idle" and self.last_success is not None:
            return f"{label}: idle, last {self.direction} {now - self.last_success:.0f} s ago"
        if self.activity == "backing off" and self.next_run is not None:
            return f"{label}: backing off, retry in {max(0.0, self.next_run - now):.0f} s"
        return f"{label}: {self.activity}"

    def to_json(self, now: float) -> dict[str, Any]:
        """The loop in the heartbeat file."""
        return {
            "direction": self.direction,
            "activity": self.activity,
            "progress": [self.done, self.total] if self.total else None,
            "next_run": None if self.next_run is None else _iso(self.next_run - now),
            "last_success": None if self.last_success is None else _iso(self.last_success - now),
            "last_error": self.last_error,
        }


@dataclass(slots=True)
class Supervision:
    """Every loop of the daemon."""

    pid: int
    started: str = field(default_factory=lambda: _iso(0))
    syncs: dict[str, LoopState] = field(default_factory=dict)
    watching: bool = False

    def healthy(self, now: float) -> bool:
        """No loop is stuck in one step."""
        return not any(s.stuck(now) for s in self.syncs.values())

    def summary(self) -> str:
        """One line for systemd's STATUS=."""
        now = time.monotonic()
        if not self.syncs:
            return "no syncs configured"
        return "; ".join(s.describe(label, now) for label, s in sorted(self.syncs.items()))

    def to_json(self) -> dict[str, Any]:
        """The heartbeat file's content."""
        now = time.monotonic()
        return {
            "pid": self.pid,
            "started": self.started,
            "heartbeat": _iso(0),
            "healthy": self.healthy(now),
            "watching_replica": self.watching,
            "syncs": {label: s.to_json(now) for label, s in self.syncs.items()},
        }


def write_heartbeat(replica: Path, state: Supervision) -> None:
    """Write the heartbeat file atomically (readers never see half a file)."""
    path = heartbeat_path(replica)
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, private_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(state.to_json(), indent=1))
        os.replace(tmp, path)
    except OSError:
        # A full disk must not leave a half-written file behind.
        tmp.unlink(missing_ok=True)
        raise


def read_heartbeat(replica: Path) -> dict[str, Any] | None:
    """The daemon's last heartbeat, if any (its liveness comes from the lock)."""
    try:
        data: dict[str, Any] = json.loads(heartbeat_path(replica).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data
