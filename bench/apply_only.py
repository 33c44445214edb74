"""The store's own CPU per record: decode and apply pages already fetched, in-process.

The emulator's pages for an account are fetched once (plain httpx); then, for each
round, a fresh replica decodes and applies them exactly as the pull does
(``Replica.decode_and_apply`` with Sell's decoder, on the writer thread), and the
process CPU time of that loop is divided by the records. No HTTP and no event-loop
work is counted: this isolates what decoding, planning, SQLite and the commits cost,
which `bench/pull.py` measures mixed with the network client. The last column is
the decoding alone (the same pages, decoded and dropped), the part before SQLite.

    .venv/bin/python bench/apply_only.py --sizes 100000 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.tables import print_markdown_table  # noqa: E402
from replicad.connectors.sell import SellClient, SellSettings  # noqa: E402
from replicad.connectors.sell_protocol import QueuePage  # noqa: E402
from replicad.store import PageBatch, PullTarget, Replica  # noqa: E402
from tests.e2e.harness import TOKEN, emulator  # noqa: E402


def fetch_pages(records: int) -> list[bytes]:
    """Every page body of an initial sync of an account of ``records`` records."""
    pages: list[bytes] = []
    with emulator(records=records) as emu:
        headers = {"Authorization": f"Bearer {TOKEN}", "X-Basecrm-Device-UUID": str(uuid.uuid4())}
        with httpx.Client(base_url=emu.url + "/v2", headers=headers, timeout=60) as http:
            session = http.post("/sync/start").json()["data"]["id"]
            while True:
                answer = http.get(f"/sync/{session}/queues/main")
                if answer.status_code == 204:
                    return pages
                pages.append(answer.content)


def decode_all(pages: list[bytes]) -> float:
    """CPU seconds to decode ``pages`` alone (the part of ``apply_all`` before SQLite)."""
    client = SellClient(SellSettings(base_url="http://unused", token=TOKEN, device_uuid="d"))
    start = time.process_time()
    for raw in pages:
        client.decode(raw)
    return time.process_time() - start


async def apply_all(pages: list[bytes], folder: Path) -> float:
    """CPU seconds to decode and apply ``pages`` into a new replica in ``folder``."""
    client = SellClient(SellSettings(base_url="http://unused", token=TOKEN, device_uuid="d"))
    target = PullTarget(sync="mirror", connection="crm")

    def decoder(raw: bytes) -> tuple[QueuePage, PageBatch]:
        page = client.decode(raw)
        return page, page.batch

    async with await Replica.open(folder / "replica.db") as replica:
        await replica.register_sync("mirror", "pull", "crm")
        start = time.process_time()
        for raw in pages:
            await replica.decode_and_apply(target, lambda raw=raw: decoder(raw))
        return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000", help="records per account, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(
        f"# replicad apply-only benchmark: Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, {platform.system()} {platform.machine()}\n"
    )
    rows = [
        ("records", "pages", "runs", "CPU µs/record (each run)", "median µs/record",
         "of which decoding")
    ]  # fmt: skip
    for size in (int(s) for s in args.sizes.split(",")):
        pages = fetch_pages(size)
        runs, decoding = [], []
        for _ in range(args.repeat):
            decoding.append(decode_all(pages) / size * 1e6)
            folder = Path(tempfile.mkdtemp(prefix="replicad-apply-"))
            try:
                runs.append(asyncio.run(apply_all(pages, folder)) / size * 1e6)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        rows.append(
            (
                f"{size:,}",
                f"{len(pages):,}",
                str(len(runs)),
                " ".join(f"{r:.2f}" for r in runs),
                f"{statistics.median(runs):.2f}",
                f"{statistics.median(decoding):.2f}",
            )
        )
    print_markdown_table(rows)


if __name__ == "__main__":
    main()
