"""Initial-pull benchmark: replicad vs a plain sequential loop, side by side.

The emulator runs in its own process (uvicorn); each client runs as its own process so
its wall time includes its start-up and its peak RSS is its own. The two clients take
turns (which one goes first alternates by round) against the same emulator, so a
slower or faster spell of a shared machine hits both alike. Prints every run, then a
summary per size: medians, and in how many rounds replicad was at least as fast.

    .venv/bin/python bench/pull.py --sizes 10000,100000 --repeat 5

The project's modules are byte-compiled first, as a regular install does: in an
editable checkout run with PYTHONDONTWRITEBYTECODE set, every start would otherwise
compile them again, which the plain loop (stdlib and installed packages only) never
pays.
"""

from __future__ import annotations

import argparse
import compileall
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from replicad.connectors.emulator_control import EmulatorControl  # noqa: E402
from tests.e2e.harness import REPLICAD, TOKEN, emulator, write_config  # noqa: E402


@dataclass(frozen=True, slots=True)
class Run:
    """One client's initial pull of one account."""

    size: int
    client: str
    seconds: float
    requests: int
    pages: int
    rss_mib: float


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


# ``--operations specific``: mirror, storing only two mapped fields of each type.
SPECIFIC = (
    'field_behavior = "specific_properties"\n[syncs.mirror.mappings]\n'
    'contact = [{ from = "name", to = "name" }, { from = "email", to = "email" }]\n'
    'lead = [{ from = "last_name", to = "last_name" }, { from = "status", to = "status" }]\n'
    'deal = [{ from = "name", to = "name" }, { from = "value", to = "value" }]\n'
)


def _clients(operations: list[str]) -> tuple[str, ...]:
    """The plain loop, and replicad once per pull operation ("replicad" is mirror)."""
    return (
        "plain loop",
        *("replicad" if op == "mirror" else f"replicad {op}" for op in operations),
    )


def bench(size: int, page_size: int, repeat: int, clients: tuple[str, ...]) -> list[Run]:
    """``repeat`` rounds of the clients against one emulator holding ``size`` records."""
    runs = []
    pages = math.ceil(size / page_size)
    with emulator(records=size, page_size=page_size) as emu, tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CRM_TOKEN": TOKEN}
        for round_ in range(repeat):
            for name in clients if round_ % 2 == 0 else clients[::-1]:
                folder = Path(tmp) / f"{name.replace(' ', '_')}{round_}"
                folder.mkdir()
                emu.control.reset_stats()
                if name.startswith("replicad"):
                    cfg = write_config(folder, emu.url)
                    operation = name.partition(" ")[2]
                    if operation == "specific":  # the pull sync is the config's last table
                        cfg.write_text(cfg.read_text() + SPECIFIC)
                    elif operation:
                        cfg.write_text(cfg.read_text() + f'operation = "{operation}"\n')
                    cmd = [REPLICAD, "sync", "--once", "--config", str(cfg)]
                else:
                    cmd = [sys.executable, str(ROOT / "bench" / "plain_loop.py"), emu.url, TOKEN,
                           str(folder / "plain.db")]  # fmt: skip
                seconds, rss = _run(cmd, env)
                runs.append(Run(size, name, seconds, _requests(emu.control), pages, rss))
    return runs


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def _summary(runs: list[Run], clients: tuple[str, ...]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        ("records", "client", "runs", "median s", "min s", "max s", "items/s (median)",
         "req/page", "peak RSS MiB", "time vs plain"),
    ]  # fmt: skip
    for size in sorted({r.size for r in runs}):
        times = {c: [r.seconds for r in runs if r.size == size and r.client == c] for c in clients}
        plain = statistics.median(times["plain loop"])
        for client in clients:
            mine = [r for r in runs if r.size == size and r.client == client]
            med = statistics.median(times[client])
            if client == "plain loop":
                versus = "1.00"
            else:
                # Rounds in which replicad took no longer than the plain loop of that round.
                wins = sum(a <= b for a, b in zip(times[client], times["plain loop"], strict=True))
                versus = f"{med / plain:.2f} (<= in {wins}/{len(mine)})"
            rows.append((
                f"{size:,}", client, str(len(mine)), f"{med:.2f}", f"{min(times[client]):.2f}",
                f"{max(times[client]):.2f}", f"{size / med:,.0f}",
                f"{mine[0].requests / mine[0].pages:.2f}", f"{max(r.rss_mib for r in mine):.0f}",
                versus,
            ))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5, help="rounds per size (default 5)")
    parser.add_argument(
        "--operations",
        default="mirror",
        help="pull operations to run replicad with, e.g. mirror,append,specific (default "
        "mirror; specific: mirror with field_behavior = specific_properties)",
    )
    args = parser.parse_args()
    clients = _clients(args.operations.split(","))
    for package in ("daemon", "store", "connectors"):
        compileall.compile_dir(ROOT / package, quiet=1)
    runs: list[Run] = []
    for size in (int(s) for s in args.sizes.split(",")):
        runs += bench(size, args.page_size, args.repeat, clients)
    _table([
        ("records", "client", "seconds", "items/s", "requests", "pages", "req/page",
         "peak RSS MiB"),
        *[
            (f"{r.size:,}", r.client, f"{r.seconds:.2f}", f"{r.size / r.seconds:,.0f}",
             str(r.requests), str(r.pages), f"{r.requests / r.pages:.2f}", f"{r.rss_mib:.0f}")
            for r in runs
        ],
    ])  # fmt: skip
    print()
    _table(_summary(runs, clients))


if __name__ == "__main__":
    main()
