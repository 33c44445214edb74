"""Initial-pull benchmark: replicad vs a plain sequential loop, side by side.

The emulator runs in its own process (uvicorn); each client runs as its own process so
its peak RSS is its own. Prints one table row per (size, client).

    .venv/bin/python bench/pull.py --sizes 10000,100000
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connectors.emulator_control import EmulatorControl  # noqa: E402
from tests.e2e.harness import REPLICAD, TOKEN, emulator, write_config  # noqa: E402


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run a command; return (seconds, peak RSS in MiB) of that process alone."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return elapsed, usage.ru_maxrss / 1024


def _requests(control: EmulatorControl) -> int:
    stats = control.stats()["requests"]
    return int(stats["start"] + stats["fetch"] + stats["ack"])


def bench(size: int, page_size: int, repeat: int) -> list[tuple[str, ...]]:
    rows = []
    pages = math.ceil(size / page_size)
    with emulator(records=size, page_size=page_size) as emu, tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CRM_TOKEN": TOKEN}
        for attempt in range(repeat):
            for name in ("plain loop", "replicad"):
                folder = Path(tmp) / f"{name.replace(' ', '_')}{attempt}"
                folder.mkdir()
                emu.control.reset_stats()
                if name == "replicad":
                    cfg = write_config(folder, emu.url)
                    cmd = [REPLICAD, "sync", "--once", "--config", str(cfg)]
                else:
                    cmd = [sys.executable, str(ROOT / "bench" / "plain_loop.py"), emu.url, TOKEN,
                           str(folder / "plain.db")]  # fmt: skip
                seconds, rss = _run(cmd, env)
                reqs = _requests(emu.control)
                rows.append((
                    f"{size:,}", name, f"{seconds:.2f}", f"{size / seconds:,.0f}", str(reqs),
                    str(pages), f"{reqs / pages:.2f}", f"{rss:.0f}",
                ))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    header = ("records", "client", "seconds", "items/s", "requests", "pages", "req/page",
              "peak RSS MiB")  # fmt: skip
    rows = [header]
    for size in (int(s) for s in args.sizes.split(",")):
        rows += bench(size, args.page_size, args.repeat)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for i, r in enumerate(rows):
        print("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


if __name__ == "__main__":
    main()
