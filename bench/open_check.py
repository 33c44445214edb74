"""The cost of the corruption check at open (``PRAGMA quick_check``) on big replicas.

Builds a replica of N synthetic contacts through the store's own page apply (no
network), closes it, then times opening it with ``Replica.open`` (which runs the
check, among the rest) and the check alone, median of ``--repeat`` (the file is in
the page cache after the first read, as on a workstation that just used it).

    .venv/bin/python bench/open_check.py --sizes 100000,1000000
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.tables import print_markdown_table  # noqa: E402
from replicad.connectors.pull_model import PageBatch, RecordChange  # noqa: E402
from replicad.store import PullTarget, Replica  # noqa: E402

TARGET = PullTarget("mirror", "crm")


def _record(i: int) -> RecordChange:
    data = {
        "id": i, "name": f"Contact {i}", "email": f"c{i}@example.org", "phone": f"+1 555 {i:07d}",
        "address": {"line1": f"{i} Main St", "city": "Springfield", "zip": f"{i % 99999:05d}"},
        "tags": ["customer", "2026"], "custom_fields": {"tier": i % 5}, "value": i * 1.5,
    }  # fmt: skip
    return RecordChange("contact", i, 1, f"k{i}", False, data)


async def build(path: Path, size: int) -> None:
    replica = await Replica.open(path)
    await replica.register_sync("mirror", "pull", "crm")
    for start in range(1, size + 1, 1000):
        changes = [_record(i) for i in range(start, min(start + 1000, size + 1))]
        await replica.apply_page(TARGET, PageBatch(changes))
    await replica.close()


async def time_open(path: Path) -> float:
    t0 = time.perf_counter()
    replica = await Replica.open(path)
    took = time.perf_counter() - t0
    await replica.close()
    return took


def time_check(path: Path) -> float:
    db = sqlite3.connect(path)
    t0 = time.perf_counter()
    assert db.execute("PRAGMA quick_check(1)").fetchone() == ("ok",)
    took = time.perf_counter() - t0
    db.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = [("records", "file MB", "open s (median)", "quick_check s (median)")]
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "replica.db"
            asyncio.run(build(path, size))
            opens = [asyncio.run(time_open(path)) for _ in range(args.repeat)]
            checks = [time_check(path) for _ in range(args.repeat)]
            rows.append((
                f"{size:,}", f"{path.stat().st_size / 1e6:.0f}",
                f"{statistics.median(opens):.2f}", f"{statistics.median(checks):.2f}",
            ))  # fmt: skip
    print_markdown_table(rows)


if __name__ == "__main__":
    main()
