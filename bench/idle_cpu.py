"""CPU used by an idle `replicad run` (pull + push syncs) over a window, as a table.

Starts the emulator and the daemon as subprocesses, waits for the first cycles to
finish, then reads the daemon's CPU time (utime + stime from /proc) over the window.
Linux only. Usage: .venv/bin/python bench/idle_cpu.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.harness import REPLICAD, cli_env, emulator, write_config


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--records", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, emulator(records=args.records) as emu:
        folder = Path(tmp)
        push = {"source": "contact", "object": "crm-contact"}
        cfg = write_config(folder, emu.url, push=push)
        cfg.write_text(cfg.read_text().replace('interval = "1s"', 'interval = "30s"'))
        env = {**cli_env(), "REPLICAD_LOG_LEVEL": "warning"}
        proc = subprocess.Popen(
            [REPLICAD, "run", "--config", str(cfg)], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(5)  # initial pull and the first push check
            before = cpu_seconds(proc.pid)
            time.sleep(args.seconds)
            used = cpu_seconds(proc.pid) - before
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
    print(f"# idle `replicad run`: pull every 30s ({args.records} records) + push sync")
    print()
    print("| window s | CPU s | CPU % of one core | exit after SIGTERM |")
    print("|----------|-------|-------------------|--------------------|")
    print(f"| {args.seconds:8.0f} | {used:5.2f} | {100 * used / args.seconds:17.2f} | {code:18d} |")


if __name__ == "__main__":
    main()
