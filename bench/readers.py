"""Local readers during a big pull: a point query every 10 ms from another process.

An app reading the replica while replicad writes it must not be stalled: SQLite's WAL
lets readers go on during a write transaction, and replicad's transactions are one
page each. This starts the emulator with ``--sizes`` records, runs ``replicad sync
--once`` against it, and meanwhile (in this process) looks one random record up by id
every 10 ms on its own connection, as an app would, timing each query. Prints the
latency distribution per size.

    .venv/bin/python bench/readers.py --sizes 100000,1000000
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.tables import print_markdown_table  # noqa: E402
from tests.e2e.harness import REPLICAD, TOKEN, emulator, write_config  # noqa: E402

INTERVAL = 0.010


def _reader_ready(db: Path) -> sqlite3.Connection | None:
    if not db.exists():
        return None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        con.execute("SELECT 1 FROM contact LIMIT 1").fetchall()
    except sqlite3.OperationalError:
        con.close()
        return None
    return con


def bench(size: int) -> tuple[list[float], float, int]:
    """Query latencies (seconds) during one initial pull of ``size`` records, the
    pull's duration, and how many queries found their row."""
    rng = random.Random(size)
    with emulator(records=size) as emu, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cfg = write_config(folder, emu.url)
        db = folder / "replica.db"
        env = {**os.environ, "CRM_TOKEN": TOKEN}
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [REPLICAD, "sync", "--once", "--no-progress", "--config", str(cfg)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        con = None
        while con is None and proc.poll() is None:
            time.sleep(INTERVAL)
            con = _reader_ready(db)
        latencies: list[float] = []
        found = 0
        next_at = time.perf_counter()
        while con is not None and proc.poll() is None:
            rid = rng.randint(1, size // 2)  # contacts are about half of the records
            q0 = time.perf_counter()
            row = con.execute("SELECT * FROM contact WHERE id = ?", (rid,)).fetchone()
            latencies.append(time.perf_counter() - q0)
            found += row is not None
            next_at += INTERVAL
            time.sleep(max(0.0, next_at - time.perf_counter()))
        proc.wait()
        took = time.perf_counter() - t0
        if con is not None:
            con.close()
        if proc.returncode != 0:
            raise SystemExit(f"replicad sync failed ({proc.returncode})")
        return latencies, took, found


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    args = parser.parse_args()
    rows = [("records", "pull s", "queries", "found", "p50 ms", "p99 ms", "max ms", "mean ms")]
    for size in (int(s) for s in args.sizes.split(",")):
        lat, took, found = bench(size)
        ms = [x * 1000 for x in lat]
        rows.append((
            f"{size:,}", f"{took:.1f}", str(len(ms)), str(found), f"{_pct(ms, 0.5):.2f}",
            f"{_pct(ms, 0.99):.2f}", f"{max(ms):.2f}", f"{statistics.mean(ms):.2f}",
        ))  # fmt: skip
    print_markdown_table(rows)


if __name__ == "__main__":
    main()
