"""Initial-pull benchmark: replicad vs a plain sequential loop and a fetch-only
client (the floor), side by side.

The emulator runs in its own process (uvicorn), answering every API request after
``--latency`` (a network's round trip); each client runs as its own process so its
wall time includes its start-up, and its peak RSS and CPU (``ru_utime + ru_stime``)
are its own. The clients take turns (the order reverses every round) against the same
emulator, so a slower or faster spell of a shared machine hits all alike. Prints
every run, then a summary per latency and size: medians, CPU per record, the
replica's bytes per record, and the ratios to the plain loop.

    .venv/bin/python bench/pull.py --sizes 10000,100000 --latency 0,50ms --repeat 5
    .venv/bin/python bench/pull.py --sizes 100000 --rate-limit 600/m --no-baselines

The plain loop (``bench/plain_loop.py``: stdlib json, one JSON blob per record, one
transaction and one ack per page) is frozen: it is the baseline and must not move.
``fetch only`` (``bench/fetch_only.py``) drains the queue and stores nothing.
``client only`` (``bench/fetch_replicad.py``) drains it with replicad's own connector
(async httpx, acks in batches) and decodes every page, storing nothing: replicad's
CPU less its CPU is what storing costs.

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
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.tables import print_markdown_table  # noqa: E402
from replicad.connectors.emulator_control import EmulatorControl  # noqa: E402
from tests.e2e.harness import REPLICAD, TOKEN, emulator, write_config  # noqa: E402


@dataclass(frozen=True, slots=True)
class Run:
    """One client's initial pull of one account."""

    latency: str
    size: int
    client: str
    seconds: float
    cpu: float  # the client process's user + system seconds
    requests: int
    pages: int
    rss_mib: float
    db_bytes: int  # the replica (or the plain loop's file) with its WAL, after the run


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Run a command; return (seconds, CPU seconds, peak RSS in MiB) of that process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def _db_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.db*") if p.suffix != ".lock")


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


SCRIPTS = {
    "plain loop": "plain_loop.py",
    "fetch only": "fetch_only.py",
    "client only": "fetch_replicad.py",
}


def _clients(operations: list[str], baselines: bool) -> tuple[str, ...]:
    """The plain loop and the floor, and replicad once per pull operation ("replicad"
    is mirror)."""
    ours = tuple("replicad" if op == "mirror" else f"replicad {op}" for op in operations)
    return (*SCRIPTS, *ours) if baselines else ours


def bench(
    size: int,
    page_size: int,
    repeat: int,
    clients: tuple[str, ...],
    latency: str,
    rate_limit: str | None,
) -> list[Run]:
    """``repeat`` rounds of the clients against one emulator holding ``size`` records."""
    runs = []
    pages = math.ceil(size / page_size)
    with (
        emulator(records=size, page_size=page_size, latency=latency) as emu,
        tempfile.TemporaryDirectory() as tmp,
    ):
        env = {**os.environ, "CRM_TOKEN": TOKEN}
        for round_ in range(repeat):
            for name in clients if round_ % 2 == 0 else clients[::-1]:
                folder = Path(tmp) / f"{name.replace(' ', '_')}{round_}"
                folder.mkdir()
                emu.control.reset_stats()
                if name.startswith("replicad"):
                    extra = {} if rate_limit is None else {"rate_limit": rate_limit}
                    cfg = write_config(folder, emu.url, **extra)
                    operation = name.partition(" ")[2]
                    if operation == "specific":  # the pull sync is the config's last table
                        cfg.write_text(cfg.read_text() + SPECIFIC)
                    elif operation:
                        cfg.write_text(cfg.read_text() + f'operation = "{operation}"\n')
                    cmd = [REPLICAD, "sync", "--once", "--config", str(cfg)]
                else:
                    cmd = [sys.executable, str(ROOT / "bench" / SCRIPTS[name]), emu.url, TOKEN,
                           str(folder / "plain.db")]  # fmt: skip
                seconds, cpu, rss = _run(cmd, env)
                runs.append(Run(
                    latency, size, name, seconds, cpu, _requests(emu.control), pages, rss,
                    _db_bytes(folder),
                ))  # fmt: skip
                shutil.rmtree(folder)
    return runs


def _summary(runs: list[Run], clients: tuple[str, ...]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        ("latency", "records", "client", "runs", "median s", "items/s", "CPU s",
         "CPU µs/record", "req/page", "peak RSS MiB", "bytes/record", "time vs plain",
         "CPU vs plain"),
    ]  # fmt: skip
    for latency, size in dict.fromkeys((r.latency, r.size) for r in runs):
        by_client = {
            c: [r for r in runs if (r.latency, r.size, r.client) == (latency, size, c)]
            for c in clients
        }
        plain = by_client.get("plain loop", [])
        for client in clients:
            got = by_client[client]
            med = statistics.median(r.seconds for r in got)
            cpu = statistics.median(r.cpu for r in got)
            if plain and client != "plain loop":
                vs_time = f"{med / statistics.median(r.seconds for r in plain):.2f}"
                vs_cpu = f"{cpu / statistics.median(r.cpu for r in plain):.2f}"
            else:
                vs_time = vs_cpu = "1.00" if plain else "-"
            nothing = client in ("fetch only", "client only")
            stored = "-" if nothing else f"{got[0].db_bytes / size:,.0f}"
            rows.append((
                latency, f"{size:,}", client, str(len(got)), f"{med:.2f}",
                f"{size / med:,.0f}", f"{cpu:.2f}", f"{cpu / size * 1e6:.0f}",
                f"{got[0].requests / got[0].pages:.2f}", f"{max(r.rss_mib for r in got):.0f}",
                stored, vs_time, vs_cpu,
            ))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5, help="rounds per size (default 5)")
    parser.add_argument(
        "--latency", default="0s", help="per-request latency(ies) of the emulator, e.g. 0,50ms"
    )
    parser.add_argument(
        "--operations",
        default="mirror",
        help="pull operations to run replicad with, e.g. mirror,append,specific (default "
        "mirror; specific: mirror with field_behavior = specific_properties)",
    )
    parser.add_argument(
        "--rate-limit", help="replicad's rate_limit for the connection (e.g. 600/m)"
    )
    parser.add_argument(
        "--no-baselines", action="store_true", help="run replicad only (no plain loop, no floor)"
    )
    args = parser.parse_args()
    clients = _clients(args.operations.split(","), not args.no_baselines)
    for package in ("daemon", "store", "connectors"):
        compileall.compile_dir(ROOT / package, quiet=1)
    runs: list[Run] = []
    for latency in args.latency.split(","):
        latency = latency if latency[-1].isalpha() else latency + "s"
        for size in (int(s) for s in args.sizes.split(",")):
            runs += bench(size, args.page_size, args.repeat, clients, latency, args.rate_limit)
    print_markdown_table([
        ("latency", "records", "client", "seconds", "CPU s", "items/s", "requests", "pages",
         "req/page", "peak RSS MiB"),
        *[
            (r.latency, f"{r.size:,}", r.client, f"{r.seconds:.2f}", f"{r.cpu:.2f}",
             f"{r.size / r.seconds:,.0f}", str(r.requests), str(r.pages),
             f"{r.requests / r.pages:.2f}", f"{r.rss_mib:.0f}")
            for r in runs
        ],
    ])  # fmt: skip
    print()
    print_markdown_table(_summary(runs, clients))


if __name__ == "__main__":
    main()
