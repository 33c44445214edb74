"""Diff-engine benchmark: the cost of one cycle of a diffed push source.

For each size, a child process builds another app's SQLite file with that many rows
(WAL), opens a replica, runs the first diff (every row new: enqueued as creates), marks
those entries sent (as a push would), then times a cycle with the source unchanged
and a cycle with 1 % of the rows changed. The child's peak RSS is its own. Times are
the median of ``--repeat`` cycles of each kind.

    .venv/bin/python bench/diff.py --sizes 100000,1000000 --repeat 3
    .venv/bin/python bench/diff.py --sizes 100000,1000000 --repeat 3 --journal delete
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from replicad.store import DiffSpec, Replica  # noqa: E402


def build_source(path: Path, rows: int, journal: str = "wal") -> None:
    """An invoicing app's table: invoices(no, customer, total, status, updated_at)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA journal_mode = {journal}")
    db.execute(
        "CREATE TABLE invoices (no INTEGER PRIMARY KEY, customer TEXT, total REAL, "
        "status TEXT, updated_at TEXT)"
    )
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO invoices VALUES (?, ?, ?, ?, ?)",
        (
            (i, f"customer{i % 5000}@example.org", round(i * 1.37, 2), "sent", "2026-11-30")
            for i in range(rows)
        ),
    )
    db.execute("COMMIT")
    db.close()


def change(path: Path, rows: int, share: float, seed: int) -> int:
    """Change ``share`` of the rows (their total); how many."""
    rng = random.Random(seed)
    picked = rng.sample(range(rows), int(rows * share))
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    db.executemany("UPDATE invoices SET total = total + 1 WHERE no = ?", ((i,) for i in picked))
    db.execute("COMMIT")
    db.close()
    return len(picked)


async def child(size: int, repeat: int, folder: Path, journal: str) -> dict[str, float]:
    """One size, measured in this process."""
    app = folder / "app.db"
    build_source(app, size, journal)
    replica = await Replica.open(folder / "replica.db")
    spec = DiffSpec("bench", "SELECT * FROM invoices", app, "no", None, "upsert")
    try:
        t0 = time.perf_counter()
        first = await replica.diff_source(spec)
        first_s = time.perf_counter() - t0
        assert first.created == size, first
        # As if the push had sent them all.
        await replica.db.execute(
            "UPDATE _replicad_outbox SET state = 'confirmed', finished_at = '2026-11-30'"
        )
        await replica.db.commit()
        unchanged, changed = [], []
        for n in range(repeat):
            t0 = time.perf_counter()
            found = await replica.diff_source(spec)
            unchanged.append(time.perf_counter() - t0)
            assert found.rows == 0, found
            moved = change(app, size, 0.01, seed=n)
            t0 = time.perf_counter()
            found = await replica.diff_source(spec)
            changed.append(time.perf_counter() - t0)
            assert found.updated == moved, (found, moved)
            await replica.db.execute(
                "UPDATE _replicad_outbox SET state = 'confirmed' WHERE state = 'pending'"
            )
            await replica.db.commit()
    finally:
        await replica.close()
    return {
        "rows": size,
        "first": first_s,
        "unchanged": statistics.median(unchanged),
        "changed": statistics.median(changed),
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "source_mib": app.stat().st_size / 2**20,
    }


def main() -> None:
    """Run each size in its own process and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--journal",
        default="wal",
        choices=("wal", "delete"),
        help="the source's journal mode (delete: read from a copy taken step by step)",
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory(prefix="replicad-bench-diff-") as tmp:
            result = asyncio.run(child(args.child, args.repeat, Path(tmp), args.journal))
        print(json.dumps(result))
        return
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(size), "--repeat", str(args.repeat),
             "--journal", args.journal],
            capture_output=True, text=True, check=True, env={**os.environ},
        )  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"source journal mode: {args.journal}\n")
    print(
        "| source rows | first diff (all new, enqueued) | unchanged cycle | 1 % changed cycle "
        "| peak RSS | source file |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['rows']:,} | {r['first']:.2f} s | {r['unchanged']:.2f} s | "
            f"{r['changed']:.2f} s | {r['rss_mib']:.0f} MiB | {r['source_mib']:.0f} MiB |"
        )


if __name__ == "__main__":
    main()
