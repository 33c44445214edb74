"""Push benchmark: local SQL edits carried upstream as Endgrate transfers.

Two measurements against the emulator (its own process, uvicorn), with the real
``replicad`` CLI as a subprocess and the edits made by this process through stdlib
sqlite3 (``BEGIN IMMEDIATE``), as an app would:

1. throughput: N inserts into ``contact`` (one transaction), then ``replicad sync
   --once`` (push first, then the pull brings the pushed records back); then N updates
   of those rows, and the same again;
2. latency: ``replicad run`` (the daemon), one insert at a time, from the local commit
   until the emulator has applied the transfer that carries it.

    .venv/bin/python bench/push.py --sizes 1000,10000
    .venv/bin/python bench/push.py --sizes 10000 --latency 50ms   # a real network's delay

``--latency``: the emulator answers every API request that much later (a round trip).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from replicad.connectors.emulator_control import EmulatorControl  # noqa: E402
from replicad.daemon.durations import parse_duration  # noqa: E402
from tests.e2e.harness import REPLICAD, TOKEN, app_db, emulator, write_config  # noqa: E402

ACCOUNT = 200  # records in the emulator's account (all types) for both measurements
PUSH_ENDPOINTS = ("transfer", "push_data", "push_errors")
POLL = 0.005  # seconds between polls of the emulator in the latency measurement

Row = tuple[str, ...]


def _env() -> dict[str, str]:
    # info: the JSON log lines (with timestamps) give the end of the push phase.
    return {**os.environ, "CRM_TOKEN": TOKEN, "REPLICAD_LOG_LEVEL": "info"}


def _push_config(folder: Path, url: str, batch_size: int, interval: str) -> Path:
    push = {"source": "contact", "object": "crm-contact", "interval": interval,
            "batch_size": batch_size}  # fmt: skip
    return write_config(folder, url, push=push)


# -- running the CLI ---------------------------------------------------------------


class Run:
    """One finished ``replicad`` process: wall time, peak RSS, its output."""

    def __init__(self, started: float, seconds: float, rss_mib: float, out: str, err: str) -> None:
        self.started = started  # time.time() just before the spawn
        self.seconds = seconds
        self.rss_mib = rss_mib
        self.out = out
        self.err = err

    def event_time(self, event: str, **match: Any) -> float | None:
        """time.time() of the last JSON log line ``event`` whose fields include ``match``."""
        found: float | None = None
        for line in self.err.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not isinstance(rec, dict) or rec.get("event") != event:
                continue
            if all(k in rec for k in match) and "timestamp" in rec:
                found = datetime.fromisoformat(rec["timestamp"]).timestamp()
        return found


def run_cli(args: Sequence[str], folder: Path) -> Run:
    """Run ``replicad`` to completion; output goes to files (no pipe can fill up)."""
    out_path, err_path = folder / "cli.out", folder / "cli.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        wall = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen([REPLICAD, *args], env=_env(), stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    run = Run(wall, seconds, usage.ru_maxrss / 1024, out_path.read_text(), err_path.read_text())
    if proc.returncode != 0:
        raise SystemExit(f"replicad {' '.join(args)} exited {proc.returncode}:\n{run.err[-2000:]}")
    return run


def _push_requests(control: EmulatorControl) -> tuple[int, int]:
    """(transfers, every push request) since the last stats reset."""
    requests: dict[str, int] = control.stats()["requests"]
    return requests.get("transfer", 0), sum(requests.get(e, 0) for e in PUSH_ENDPOINTS)


# -- throughput ----------------------------------------------------------------------


def _contacts(control: EmulatorControl) -> list[dict[str, Any]]:
    records: dict[str, dict[str, Any]] = control.state()["records"].get("contact", {})
    return list(records.values())


def _timed_write(db_path: Path, sql: str, params: list[tuple[Any, ...]]) -> float:
    """Seconds of one ``BEGIN IMMEDIATE`` … ``COMMIT`` running ``sql`` per parameter row."""
    db = app_db(db_path)
    try:
        t0 = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.executemany(sql, params)
        db.execute("COMMIT")
        return time.perf_counter() - t0
    finally:
        db.close()


def _count(db_path: Path, sql: str, *args: Any) -> int:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        value: int = db.execute(sql, args).fetchone()[0]
        return value
    finally:
        db.close()


def _ids(db_path: Path, last_name: str) -> list[int]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        return [
            r[0] for r in db.execute("SELECT id FROM contact WHERE last_name = ?", (last_name,))
        ]
    finally:
        db.close()


def _pulled(out: str) -> str:
    m = re.search(r"^mirror: (\d+) items", out, re.MULTILINE)
    return m.group(1) if m else "?"


def _result_row(
    size: int, scenario: str, commit_s: float, run: Run, control: EmulatorControl
) -> Row:
    transfers, requests = _push_requests(control)
    pushed_at = run.event_time("push.done", batches=True)
    push_s = f"{pushed_at - run.started:.2f}" if pushed_at is not None else "?"
    return (
        f"{size:,}", scenario, f"{commit_s * 1000:.0f}", f"{run.seconds:.2f}",
        f"{size / run.seconds:,.0f}", push_s, str(transfers), str(requests),
        f"{size / transfers:.1f}" if transfers else "-", _pulled(run.out), f"{run.rss_mib:.0f}",
    )  # fmt: skip


def throughput(size: int, batch_size: int, latency: str) -> tuple[list[Row], list[Row]]:
    """Insert then update ``size`` contacts, one timed ``sync --once`` each.

    Returns (measurement rows, check rows).
    """
    rows: list[Row] = []
    checks: list[Row] = []
    tag = f"pb{size}"
    with (
        emulator(records=ACCOUNT, latency=latency) as emu,
        tempfile.TemporaryDirectory() as tmp,
    ):
        folder = Path(tmp)
        db = folder / "replica.db"
        cfg = _push_config(folder, emu.url, batch_size, "1s")
        sync = ["sync", "--once", "--no-progress", "--config", str(cfg)]
        run_cli(sync, folder)  # the initial pull: creates the replica and its tables

        # Inserts: every row gets its id from the transfer and _pending = 0.
        commit_s = _timed_write(
            db,
            "INSERT INTO contact (first_name, last_name, email) VALUES (?, ?, ?)",
            [(f"B{i}", tag, f"{tag}-{i}@example.org") for i in range(size)],
        )
        emu.control.reset_stats()
        run = run_cli(sync, folder)
        rows.append(_result_row(size, "insert", commit_s, run, emu.control))
        ok = _count(db, "SELECT count(*) FROM contact WHERE last_name = ? AND id IS NOT NULL "
                    "AND _pending = 0", tag)  # fmt: skip
        local = _count(db, "SELECT count(*) FROM contact WHERE last_name = ?", tag)
        remote = [c for c in _contacts(emu.control) if c.get("last_name") == tag]
        emails = {c.get("email") for c in remote}
        checks.append((
            f"{size:,}", "insert", f"{ok}/{size}", str(local), str(len(remote)),
            "yes" if len(remote) == size and len(emails) == size else "NO",
        ))  # fmt: skip

        # Updates of the same rows, now confirmed: one UPDATE statement per row.
        ids = [(f"U{i}", rid) for i, rid in enumerate(_ids(db, tag))]
        commit_s = _timed_write(db, "UPDATE contact SET first_name = ? WHERE id = ?", ids)
        emu.control.reset_stats()
        run = run_cli(sync, folder)
        rows.append(_result_row(len(ids), "update", commit_s, run, emu.control))
        ok = _count(db, "SELECT count(*) FROM contact WHERE last_name = ? AND first_name LIKE 'U%' "
                    "AND _pending = 0", tag)  # fmt: skip
        local = _count(db, "SELECT count(*) FROM contact WHERE last_name = ?", tag)
        remote = [c for c in _contacts(emu.control) if c.get("last_name") == tag]
        updated = sum(1 for c in remote if str(c.get("first_name", "")).startswith("U"))
        checks.append((
            f"{len(ids):,}", "update", f"{ok}/{len(ids)}", str(local),
            f"{len(remote)} ({updated} updated)",
            "yes" if len(remote) == size and updated == len(ids) else "NO",
        ))  # fmt: skip
    return rows, checks


# -- latency -------------------------------------------------------------------------


def _vm_hwm_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _wait_for_log(log: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while needle not in log.read_text():
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited {proc.returncode}:\n{log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"the daemon logged no {needle!r} within {timeout:.0f}s")
        time.sleep(0.02)


def _arrival(control: EmulatorControl, seen: int, timeout: float = 30.0) -> float:
    """perf_counter() when a transfer after entry ``seen`` of the push log has been applied."""
    deadline = time.monotonic() + timeout
    while True:
        entries = control.pushes()
        if any(e["endpoint"] == "transfer" and e["applied"] for e in entries[seen:]):
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise SystemExit("no transfer arrived upstream within 30s")
        time.sleep(POLL)


def _insert_one(db_path: Path, n: int) -> float:
    """Insert contact ``n``; perf_counter() right after its COMMIT returned.

    Name and email are both unique: the destination upserts a new internal_id onto an
    existing record with the same email, phone or full name.
    """
    db = app_db(db_path)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO contact (first_name, last_name, email) VALUES (?, 'Latency', ?)",
            (f"L{n}", _lat_email(n)),
        )
        db.execute("COMMIT")
        return time.perf_counter()
    finally:
        db.close()


def _lat_email(n: int) -> str:
    return f"lat-{n}@example.org"


def _pct(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    rank = max(1, min(len(sorted_ms), math.ceil(q / 100 * len(sorted_ms))))
    return sorted_ms[rank - 1]


def latency(
    samples: int, interval_s: float, interval: str, batch_size: int, seed: int, network: str
) -> Row:
    """Commit → applied upstream, ``samples`` single inserts against ``replicad run``."""
    rng = random.Random(seed)
    with (
        emulator(records=ACCOUNT, latency=network) as emu,
        tempfile.TemporaryDirectory() as tmp,
    ):
        folder = Path(tmp)
        db = folder / "replica.db"
        cfg = _push_config(folder, emu.url, batch_size, interval)
        log = folder / "daemon.log"
        with log.open("w") as err:
            proc = subprocess.Popen(
                [REPLICAD, "run", "--config", str(cfg)], env=_env(),
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        hwm: float | None = None
        try:
            _wait_for_log(log, '"pull.done"', proc, timeout=60)  # first cycle: replica ready
            ms: list[float] = []
            # One unmeasured sample first: the connection to the destination is opened then.
            for i in range(samples + 1):
                # A random pause so that commits land at random phases of the daemon's
                # interval (right after an arrival they would all land at its start).
                time.sleep(rng.uniform(0, min(interval_s, 0.1)))
                seen = len(emu.control.pushes())
                committed = _insert_one(db, i)
                arrived = _arrival(emu.control, seen)
                if i:
                    ms.append((arrived - committed) * 1000)
            hwm = _vm_hwm_mib(proc.pid)
            remote = {c.get("email") for c in _contacts(emu.control)}
            upstream = sum(1 for i in range(samples + 1) if _lat_email(i) in remote)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        ms.sort()
        return (
            interval, str(samples), f"{ms[0]:.1f}", f"{statistics.median(ms):.1f}",
            f"{_pct(ms, 90):.1f}", f"{_pct(ms, 99):.1f}", f"{ms[-1]:.1f}",
            f"{upstream}/{samples + 1}", f"{hwm:.0f}" if hwm is not None else "?",
            str(proc.returncode),
        )  # fmt: skip


# -- output --------------------------------------------------------------------------


def print_table(header: Row, rows: list[Row]) -> None:
    """A markdown table, right-aligned columns."""
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, r in enumerate(table):
        print("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print()


def _seconds(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise SystemExit(f"--interval: {e}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="edits per throughput run")
    parser.add_argument("--batch-size", type=int, default=100, help="the push sync's batch_size")
    parser.add_argument("--samples", type=int, default=50, help="latency samples")
    parser.add_argument("--interval", default="1h", help="the push sync's fallback poll interval")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--latency", default="0s", help="the emulator's per-request latency")
    args = parser.parse_args()
    interval_s = _seconds(args.interval)

    print(
        f"# replicad push benchmark: {os.cpu_count()} CPUs, Python {platform.python_version()} "
        f"({platform.python_implementation()}), SQLite {sqlite3.sqlite_version}, "
        f"{platform.system()} {platform.machine()}; account {ACCOUNT} records, "
        f"batch_size {args.batch_size}, emulator latency {args.latency}"
    )
    print()
    if not args.skip_throughput:
        rows: list[Row] = []
        checks: list[Row] = []
        for size in (int(s) for s in args.sizes.split(",")):
            r, c = throughput(size, args.batch_size, args.latency)
            rows += r
            checks += c
        print("## Throughput: N edits in one local transaction, then `replicad sync --once`")
        print()
        print_table(
            ("edits", "op", "commit ms", "sync s", "edits/s", "push s", "transfers",
             "push reqs", "edits/transfer", "pulled back", "peak RSS MiB"),
            rows,
        )  # fmt: skip
        print(
            "commit ms: the app's BEGIN IMMEDIATE..COMMIT (outbox triggers included). sync s: "
            "wall time of the whole `sync --once` process (start-up, push, pull back); "
            "edits/s = edits / sync s. push s: from the spawn to the end of the push phase "
            "(its log line). push reqs: transfer + push/data + errors requests."
        )
        print()
        print_table(
            ("edits", "op", "local id & _pending=0", "local rows", "remote records",
             "remote == N"),
            checks,
        )  # fmt: skip
    if not args.skip_latency:
        print("## Latency: local COMMIT → transfer applied upstream (`replicad run`)")
        print()
        row = latency(
            args.samples, interval_s, args.interval, args.batch_size, args.seed, args.latency
        )
        print_table(
            ("push interval", "samples", "min ms", "p50 ms", "p90 ms", "p99 ms", "max ms",
             "upstream", "daemon peak RSS MiB", "exit after SIGTERM"),
            [row],
        )  # fmt: skip
        print(
            "The daemon is woken by watchfiles (inotify) when the replica's WAL changes; "
            f"the push interval ({args.interval}) is only the fallback poll when file "
            "events are unavailable. Latency = file event (10 ms step) + outbox probe + "
            f"one transfer. The emulator's push log is polled every {POLL * 1000:.0f} ms "
            "(resolution), and one warm-up sample (connection set-up) is not counted."
        )


if __name__ == "__main__":
    main()
