"""``replicad sync --once``: one cycle of every non-paused sync, then exit."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import Any

import anyio
import structlog

from replicad.connectors.errors import ConnectorError
from replicad.daemon import exits
from replicad.daemon.config import Config
from replicad.daemon.engine import open_engine
from replicad.daemon.heartbeat import read_heartbeat
from replicad.daemon.logs import redact
from replicad.daemon.sources import check_diffed_sources
from replicad.daemon.status_view import status_report
from replicad.store import ReplicaBusy, SourceError
from replicad.store.lock import DAEMON, holder, is_held, lock_path
from replicad.store.outbox import utcnow

log = structlog.get_logger("replicad.sync")


async def sync_once(config: Config, show_progress: bool) -> int:
    """Run each sync once; report each outcome; return the first failure's exit code.

    While a daemon holds the replica, the cycle is asked of it instead.
    """
    pid = await held_by_daemon(config)
    if pid is not None:
        return await ask_daemon(config, pid)
    problems = await anyio.to_thread.run_sync(check_diffed_sources, config)
    if problems:
        raise problems[0]
    code = exits.OK
    rejected = quarantined = 0
    async with open_engine(config) as engine:
        syncs = engine.pull_syncs()
        pushes = engine.push_syncs()
        if not syncs and not pushes:
            print("replicad: no sync to run (all paused, or none configured)", file=sys.stderr)
        # Push first: local edits reach the remote, and the pull then brings them back
        # with their remote revisions instead of journaling them as conflicts.
        for push in pushes:
            try:
                report = await engine.push(push)
            except (ConnectorError, SourceError) as error:
                code = code or exits.exit_code(error)
                print(f"replicad: sync {push.label}: {redact(str(error))}", file=sys.stderr)
                continue
            rejected += report.rejected
            # A diffed source has changes of its rows, not edits of the replica.
            what = "local edit" if push.diffed is None else "source change"
            if report.sent == 0:
                print(f"{push.label}: no {what}s to push")
                continue
            missing = f", {report.not_found} not found" if report.not_found else ""
            print(
                f"{push.label}: pushed {report.sent} {what}{_plural(report.sent)} in "
                f"{report.batches} batch{'' if report.batches == 1 else 'es'} "
                f"({report.confirmed} confirmed, {report.rejected} rejected{missing})"
            )
        if show_progress:
            # Imported only for a terminal: rich is a large import for one sync.
            from replicad.daemon.progress import BarProgress

            bar: BarProgress | None = BarProgress()
        else:
            bar = None
        # Summaries print after the bar has finished (on a terminal they would land
        # above it).
        lines: list[str] = []
        with bar if bar is not None else nullcontext():
            for sync in syncs:
                try:
                    outcome = await engine.pull(sync, bar)
                except ConnectorError as error:
                    code = code or exits.exit_code(error)
                    print(f"replicad: sync {sync.label}: {redact(str(error))}", file=sys.stderr)
                    continue
                quarantined += outcome.quarantined
                lines.append(
                    f"{sync.label}: {outcome.items} item{_plural(outcome.items)} in "
                    f"{outcome.pages} page{_plural(outcome.pages)} "
                    f"({outcome.sessions} session{_plural(outcome.sessions)}), "
                    f"{outcome.applied} rows changed"
                    + (f", {outcome.quarantined} quarantined" if outcome.quarantined else "")
                    + (
                        f", {outcome.failed_objects} failed objects"
                        if outcome.failed_objects
                        else ""
                    )
                )
        for line in lines:
            print(line)
    if code == exits.OK and (rejected or quarantined):
        parts = [f"{rejected} local edit{_plural(rejected)} rejected"] if rejected else []
        if quarantined:
            parts.append(f"{quarantined} remote item{_plural(quarantined)} quarantined")
        print(
            f"replicad: done, but {' and '.join(parts)}; see `replicad status` "
            "(replicad_outbox, replicad_quarantine)",
            file=sys.stderr,
        )
        code = exits.PARTIAL
    return code


# How long `sync` waits for the running daemon's cycle before giving up waiting.
ASK_TIMEOUT = 900.0


# How long another command holding the replica may take to finish before this one
# gives up; and how fresh the heartbeat of a daemon of a version that did not say what
# it is in its lock must be.
HOLDER_ENDS_WITHIN = 5.0
FRESH_HEARTBEAT = 30.0


async def held_by_daemon(config: Config) -> int | None:
    """The pid of the daemon (``replicad run``) holding the replica, None when no known
    process holds it; ReplicaBusy when another command does (and goes on doing so).

    Only the daemon handles SIGUSR1 and SIGHUP: another command (a second `sync`)
    would be killed by them. The lock file says which the holder is.
    """
    # The pid and the role as one holder wrote them, then that holder still live: read
    # apart, they could be one command's pid and the daemon's role after it.
    pid, role = holder(lock_path(config.replica_path))
    if pid is None or is_held(config.replica_path) != pid:
        return None  # none, or an unknown one: opening the replica says which it is
    if role == DAEMON or (role is None and _fresh_heartbeat_of(config, pid)):
        return pid
    for _ in range(round(HOLDER_ENDS_WITHIN / 0.1)):
        if is_held(config.replica_path) != pid:
            return None  # it has finished: this command may hold the replica itself
        await anyio.sleep(0.1)
    raise ReplicaBusy(
        f"replica {config.replica_path} is in use by replicad process {pid}, a command "
        "other than the daemon (`replicad run`); run this again once it has finished"
    )


def _fresh_heartbeat_of(config: Config, pid: int) -> bool:
    """Whether a recent heartbeat names ``pid`` (a daemon from before locks said so;
    a stale file of a killed daemon may name a pid another process has since)."""
    beat = read_heartbeat(config.replica_path)
    if beat is None or beat.get("pid") != pid:
        return False
    try:
        written = datetime.fromisoformat(str(beat.get("heartbeat")).replace("Z", "+00:00"))
    except ValueError:
        return False
    return (datetime.now(UTC) - written).total_seconds() < FRESH_HEARTBEAT


async def ask_daemon(config: Config, pid: int) -> int:
    """Have the running daemon run a cycle of every sync now, and report its outcome.

    SIGUSR1 wakes its pull loops (its push loops run on every edit anyway); each sync
    is done when ``replicad_syncs`` records a success or failure after the request
    (a push with nothing left to send is done at once).
    """
    requested = utcnow()
    labels = [s.label for s in config.syncs.values() if not s.paused]
    print(f"asking the running daemon (pid {pid}) for a cycle of {', '.join(labels)}",
          file=sys.stderr)  # fmt: skip
    os.kill(pid, signal.SIGUSR1)

    def done(s: dict[str, Any]) -> bool:
        idle_push = (
            s["direction"] == "push"
            and s.get("pending_local_edits", 0) == 0
            and s.get("state") != "failing"
        )
        return (s.get("last_success") or "") > requested or idle_push

    return await watch_daemon(config, pid, labels, requested, done, "done by the running daemon")


async def watch_daemon(
    config: Config,
    pid: int,
    labels: list[str],
    requested: str,
    done: Callable[[dict[str, Any]], bool],
    said: str,
) -> int:
    """Follow ``labels`` in ``replicad_syncs`` until each is ``done`` (its status
    entry) or failed after ``requested``; say each outcome; exit code 1 if one failed
    or the wait ran out (``ASK_TIMEOUT``)."""
    pending = set(labels)
    code = exits.OK
    with anyio.move_on_after(ASK_TIMEOUT):
        while pending:
            await anyio.sleep(0.25)
            # Whether it still runs, before what it recorded: a cycle it recorded just
            # before stopping still counts.
            gone = is_held(config.replica_path) != pid
            report = await anyio.to_thread.run_sync(status_report, config)
            for s in report["syncs"]:
                label = s["sync"]
                if label not in pending:
                    continue
                if (s.get("last_error_at") or "") > requested:
                    print(f"replicad: sync {label}: {s.get('last_error')}", file=sys.stderr)
                    code = code or exits.FAILURE
                elif done(s):
                    print(f"{label}: {said}")
                else:
                    continue
                pending.discard(label)
            if gone and pending:
                print(f"replicad: the daemon (pid {pid}) stopped before it had finished "
                      f"{', '.join(sorted(pending))}; see `replicad status`",
                      file=sys.stderr)  # fmt: skip
                return exits.FAILURE
    if pending:
        print(f"replicad: the daemon (pid {pid}) has not finished {', '.join(sorted(pending))} "
              f"after {ASK_TIMEOUT:.0f}s; see `replicad status`", file=sys.stderr)  # fmt: skip
        return exits.FAILURE
    return code


def _plural(n: int) -> str:
    return "" if n == 1 else "s"
