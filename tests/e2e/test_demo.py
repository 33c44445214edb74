"""`replicad demo` works with nothing but the install, and starts over when run again."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

from tests.e2e.harness import REPLICAD


def test_demo_runs_twice_from_scratch(tmp_path: Path) -> None:
    """The demo exits 0 twice in a row and leaves a replica with the demo's changes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICAD_")}
    for _ in range(2):
        done = subprocess.run(
            [REPLICAD, "demo"], cwd=tmp_path, capture_output=True, text=True, env=env,
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        # The account's 3000 records, and the 3 deals the demo's invoices became.
        assert "3003 items" in done.stdout and "replicad_syncs" in done.stdout
        assert "'INV-1001': 1350.0" in done.stdout and "'INV-1004': 64.0" in done.stdout
    db = sqlite3.connect(tmp_path / "replicad-demo" / "replica.db")
    assert db.execute("SELECT name FROM contact WHERE id = 1").fetchone() == ("Ada Lovelace",)
    assert db.execute("SELECT count(*) FROM deal WHERE id = 2").fetchone() == (0,)
    navy = db.execute("SELECT count(*) FROM lead WHERE organization_name = 'Navy'").fetchone()
    assert navy == (1,)
    mode = (tmp_path / "replicad-demo" / "token").stat().st_mode & 0o777
    assert mode == 0o600
