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


def test_demo_refuses_a_folder_with_unsent_edits_unless_forced(tmp_path: Path) -> None:
    """A local edit not yet sent in the demo's replica: the demo refuses to start over
    (exit 2, saying why, nothing touched); --force starts over."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICAD_")}

    def demo(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [REPLICAD, "demo", *args], cwd=tmp_path, capture_output=True, text=True,
            env=env, timeout=120,
        )  # fmt: skip

    assert demo().returncode == 0
    db = tmp_path / "replicad-demo" / "replica.db"
    app = sqlite3.connect(db, timeout=10)
    app.execute("INSERT INTO contact (first_name, email) VALUES ('Mine', 'mine@example.org')")
    app.commit()
    app.close()
    config = (tmp_path / "replicad-demo" / "config.toml").read_text()
    refused = demo()
    assert refused.returncode == 2
    assert "1 local edit not yet sent" in refused.stderr and "--force" in refused.stderr
    assert (tmp_path / "replicad-demo" / "config.toml").read_text() == config
    check = sqlite3.connect(db)
    assert check.execute(
        "SELECT count(*) FROM contact WHERE email = 'mine@example.org'"
    ).fetchone() == (1,)
    check.close()
    assert demo("--force").returncode == 0
