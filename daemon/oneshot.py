"""``replicad sync --once``: one cycle of every non-paused sync, then exit."""

from __future__ import annotations

import sys
from contextlib import nullcontext

import structlog

from replicad.connectors.errors import ConnectorError
from replicad.daemon import exits
from replicad.daemon.config import Config
from replicad.daemon.engine import open_engine
from replicad.daemon.logs import redact

log = structlog.get_logger("replicad.sync")


async def sync_once(config: Config, show_progress: bool) -> int:
    """Run each sync once; report each outcome; return the first failure's exit code."""
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
            except ConnectorError as error:
                code = code or exits.exit_code(error)
                print(f"replicad: sync {push.label}: {redact(str(error))}", file=sys.stderr)
                continue
            rejected += report.rejected
            if report.sent == 0:
                print(f"{push.label}: no local edits to push")
                continue
            print(
                f"{push.label}: pushed {report.sent} local edit{_plural(report.sent)} in "
                f"{report.batches} batch{'' if report.batches == 1 else 'es'} "
                f"({report.confirmed} confirmed, {report.rejected} rejected)"
            )
        if show_progress:
            # Imported only for a terminal: rich is a large import for one sync.
            from replicad.daemon.progress import BarProgress

            bar: BarProgress | None = BarProgress()
        else:
            bar = None
        with bar if bar is not None else nullcontext():
            for sync in syncs:
                try:
                    outcome = await engine.pull(sync, bar)
                except ConnectorError as error:
                    code = code or exits.exit_code(error)
                    print(f"replicad: sync {sync.label}: {redact(str(error))}", file=sys.stderr)
                    continue
                quarantined += outcome.quarantined
                print(
                    f"{sync.label}: {outcome.items} items in {outcome.pages} pages "
                    f"({outcome.sessions} session{_plural(outcome.sessions)}), "
                    f"{outcome.applied} rows changed"
                    + (f", {outcome.quarantined} quarantined" if outcome.quarantined else "")
                    + (
                        f", {outcome.failed_objects} failed objects"
                        if outcome.failed_objects
                        else ""
                    )
                )
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


def _plural(n: int) -> str:
    return "" if n == 1 else "s"
