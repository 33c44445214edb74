"""kill -9 at random moments of a large sync, then resume: same replica as a clean run."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from pathlib import Path

from tests.e2e.harness import (
    assert_replica_matches,
    emulator,
    replicad,
    start_replicad,
    stored_rows,
    write_config,
)

# REPLICAD_CRASH_RECORDS=100000 runs the same test on a 100k-record account.
RECORDS = int(os.environ.get("REPLICAD_CRASH_RECORDS", "20000"))


def test_kill_9_during_large_sync_then_resume(tmp_path: Path) -> None:
    """Several kill -9 mid-sync (with remote changes in between) converge on resume."""
    rng = random.Random(20)
    replica = tmp_path / "replica.db"
    with emulator(records=RECORDS) as emu:
        cfg = write_config(tmp_path, emu.url)
        kills = 0
        for round_ in range(4):
            proc = start_replicad("sync", "--once", "--config", str(cfg))
            before = stored_rows(replica)
            deadline = time.monotonic() + 30
            # Kill once this run has visibly progressed, at a random row count.
            target = before + rng.randint(200, 4000)
            while proc.poll() is None and stored_rows(replica) < target:
                if time.monotonic() > deadline:
                    break
                time.sleep(rng.uniform(0.0, 0.05))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            emu.control.mutate(random=50, seed=round_)
        assert kills >= 3, "the sync finished before it could be killed"
        done = replicad("sync", "--once", "--config", str(cfg), timeout=300)
        assert done.returncode == 0, done.stderr
        assert_replica_matches(replica, emu)
        stats = emu.control.stats()
        assert sum(d["queued"] for d in stats["devices"].values()) == 0
        db = sqlite3.connect(replica)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM _replicad_pending_acks").fetchone() == (0,)
