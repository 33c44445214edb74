"""The operator's commands: ``resync``, ``backup``, ``doctor``, ``conflicts``.

Each prints what it did on stdout and fails with one line (``OperatorError``, exit
2). They work while the daemon runs, except ``doctor --repair``, which needs the
replica's lock.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from replicad.daemon import exits
from replicad.daemon.config import Config, ConfigError
from replicad.daemon.oneshot import held_by_daemon, watch_daemon
from replicad.store import ReplicaBusy
from replicad.store.operate import (
    backup,
    conflicts,
    device_of,
    diagnose,
    repair,
    resolve,
    resync_at,
)
from replicad.store.outbox import utcnow


def resync(config: Config, labels: Sequence[str]) -> int:
    """Start a full pull of the named pull syncs (all when none is named)."""
    pulls = {s.label: s for s in config.syncs.values() if s.direction == "pull"}
    for label in labels:
        if label not in config.syncs:
            raise ConfigError(f"resync: no sync named {label!r} in {config.path}")
        if label not in pulls:
            raise ConfigError(f"resync: sync {label!r} is a push sync; only pulls resync")
    chosen = [pulls[label] for label in labels] if labels else list(pulls.values())
    if not chosen:
        raise ConfigError(f"resync: {config.path} has no pull sync")
    for s in chosen:
        pinned = config.connections[s.connection].device_uuid
        if pinned is not None and pinned == device_of(config.replica_path, s.connection):
            # Asked for anyway, the full pull would be refused at every cycle.
            raise ConfigError(
                f"resync: connections.{s.connection}.device_uuid pins the device sync "
                f"{s.label!r} pulls with, but a full pull needs a new one (under the same "
                "device the remote sends only what is new): set another device_uuid for "
                "this replica, or remove the key, then run resync again"
            )
    requested = utcnow()
    resync_at(config.replica_path, [s.connection for s in chosen])
    names = ", ".join(s.label for s in chosen)
    unpaused = [s.label for s in chosen if not s.paused]
    return anyio.run(_hand_to_daemon, config, names, unpaused, requested)


async def _hand_to_daemon(config: Config, names: str, labels: list[str], requested: str) -> int:
    """Wake the daemon holding the replica for the full pull just requested and report
    its result, as `sync` does; with no daemon (or only paused syncs) say when it runs."""
    try:
        pid = await held_by_daemon(config)
    except ReplicaBusy:
        pid = None  # a one-shot command holds it: its cycle under way ends as it was
    if pid is None or not labels:
        when = "the next `replicad sync`" if labels else "the first pull once resumed"
        print(f"resync of {names} started; {when} pulls everything again")
        return exits.OK
    # Reload (a mapping change waits for the resync) and pull now, not at the interval;
    # done once a cycle after the request has succeeded and the full pull has drained
    # (it is no longer running).
    os.kill(pid, signal.SIGHUP)
    os.kill(pid, signal.SIGUSR1)
    print(f"resync of {names} started; the running daemon (pid {pid}) pulls everything now",
          file=sys.stderr)  # fmt: skip

    def done(s: dict[str, Any]) -> bool:
        return not s.get("resync_since") and (s.get("last_success") or "") > requested

    return await watch_daemon(config, pid, labels, requested, done, "pulled everything again")


def backup_cmd(config: Config, dest: Path) -> int:
    """A consistent online copy of the replica."""
    show = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if show and total:
            print(f"\rbacking up: {100 * done // total:3d}%", end="", file=sys.stderr)

    size = backup(config.replica_path, dest, progress)
    if show:
        print(file=sys.stderr)
    print(f"backed up {config.replica_path} to {dest} ({size / 1e6:.1f} MB, mode 0600)")
    print(
        "restored (copied back into place, daemon stopped, -wal and -shm removed), it is "
        "detected as a copy: it takes its own device identity and pulls everything "
        "again, keeping its local edits"
    )
    return exits.OK


def doctor(config: Config, fix: bool, as_json: bool) -> int:
    """Check the replica (and with ``fix``, repair it); exit 1 while something is wrong."""
    path = config.replica_path
    if fix:
        report = repair(path)
        for line in report.done:
            print(f"repaired: {line}")
        for line in report.lost:
            print(f"not recovered: {line}")
        if not report.done and not report.lost:
            print("nothing to repair")
    diagnosis = diagnose(path)
    if as_json:
        body = {
            "replica": diagnosis.path,
            "healthy": diagnosis.healthy,
            "checks": [
                {"check": f.check, "ok": f.ok, "detail": f.detail, "fix": f.fix}
                for f in diagnosis.findings
            ],
        }
        json.dump(body, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for f in diagnosis.findings:
            mark = "ok  " if f.ok else "FAIL"
            print(f"{mark} {f.check:<20} {f.detail}" + (f"  → {f.fix}" if f.fix else ""))
    return exits.OK if diagnosis.healthy else exits.FAILURE


def conflicts_cmd(config: Config, as_json: bool, show_all: bool) -> int:
    """List the conflict journal (open entries unless ``show_all``)."""
    entries = conflicts(config.replica_path, closed=show_all)
    if as_json:
        json.dump(entries, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return exits.OK
    if not entries:
        print("no open conflicts")
        return exits.OK
    for e in entries:
        state = f"closed, kept {e['kept']}" if e.get("closed_at") else "open"
        print(
            f"{e['seq']:>5}  {e['table']}.{e['field']}  id={e['id']}  local={e['local_value']!r}"
            f"  remote={e['remote_value']!r}  ({e['resolution']}; {state})"
        )
    print("resolve with: replicad conflicts resolve ID… --keep local|remote")
    return exits.OK


def resolve_cmd(config: Config, seqs: Sequence[int], keep: str) -> int:
    """Close conflict entries keeping one side."""
    for line in resolve(config.replica_path, seqs, keep):
        print(line)
    return exits.OK
