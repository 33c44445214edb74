"""A rich progress bar per sync, driven by the queue's total_count and count_left."""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)


class BarProgress:
    """Progress bars on stderr (only used when stderr is a terminal)."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("items"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[note]}"),
            console=console or Console(stderr=True),
            transient=False,
            # rich routes prints made while the bar is live through its console (so
            # they do not tear the bar) — only right when stdout is that terminal too;
            # a summary piped to a file must stay on stdout.
            redirect_stdout=sys.stdout.isatty(),
        )
        self._tasks: dict[str, TaskID] = {}
        self._done: dict[str, int] = {}
        self._left: dict[str, int | None] = {}

    def __enter__(self) -> BarProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def session(self, sync: str, total: int | None) -> None:
        """A session started: (re)size the bar."""
        self._done[sync] = 0
        if sync in self._tasks:
            self._progress.reset(self._tasks[sync], total=total, note="")
        else:
            self._tasks[sync] = self._progress.add_task(f"pull {sync}", total=total, note="")

    def page(self, sync: str, items: int, count_left: int | None) -> None:
        """A page committed: advance, and trust the server's count_left for the total."""
        self._done[sync] = self._done.get(sync, 0) + items
        total = self._done[sync] + count_left if count_left is not None else None
        self._progress.update(self._tasks[sync], completed=self._done[sync], total=total)
        self._left[sync] = count_left

    def waiting(self, sync: str, seconds: float, items_per_second: float) -> None:
        """The rate budget sets the pace: say so, with the estimate it gives (the
        time column's estimate follows the pace seen so far, faster than the budget)."""
        left = self._left.get(sync)
        eta = ""
        if left is not None and items_per_second > 0:
            eta = f", about {_duration(left / items_per_second)} left at the budget's pace"
        note = f"[yellow]paced by the rate budget{eta}"
        if sync in self._tasks:
            self._progress.update(self._tasks[sync], note=note)


def _duration(seconds: float) -> str:
    """``1h05m``, ``4m10s``, ``9s``."""
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"
