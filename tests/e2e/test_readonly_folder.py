"""A replica in a folder the user cannot write: reading commands work, writing ones
say so in one line (run as another user, so root's permission bypass does not hide
it)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from replicad.store import Replica

NOBODY = 65534
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run the CLI as another user",
)
CONFIG = """[replica]
path = "replica.db"
[connections.crm]
kind = "sell"
base_url = "http://127.0.0.1:9"
token_env = "CRM_TOKEN"
[syncs.mirror]
direction = "pull"
connection = "crm"
"""


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder others may read but not write, holding a config and a replica."""
    path = Path(tempfile.mkdtemp(prefix="replicad-ro-"))
    try:
        (path / "config.toml").write_text(CONFIG)
        anyio.run(_make_replica, path / "replica.db")
        for p in path.iterdir():
            p.chmod(0o644)
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path)


async def _make_replica(path: Path) -> None:
    replica = await Replica.open(path)
    await replica.register_sync("mirror", "pull", "crm")
    await replica.close()


def as_nobody(*args: str, folder: Path) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).with_name("replicad"))
    cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", exe, *args]
    env = {**os.environ, "CRM_TOKEN": "t" * 40, "HOME": "/nonexistent"}
    cfg = ["--config", str(folder / "config.toml")]
    return subprocess.run(cmd + cfg, capture_output=True, text=True, env=env, timeout=60)


def test_reading_commands_work_and_writing_ones_say_why(folder: Path) -> None:
    """After a clean stop (no -wal left) status and doctor read the replica; sync
    exits 2 with one line naming the folder; with changes still in the -wal, status
    exits 2 saying what it needs."""
    assert not (folder / "replica.db-wal").exists()
    status = as_nobody("status", folder=folder)
    assert status.returncode == 0, status.stderr
    assert "sync mirror" in status.stdout
    assert as_nobody("doctor", folder=folder).returncode == 0
    done = as_nobody("sync", "--once", "--no-progress", folder=folder)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert str(folder) in line and "Traceback" not in done.stderr
    # Changes left in the WAL (a daemon killed), and no -shm: reading them needs one.
    db = sqlite3.connect(folder / "replica.db", isolation_level=None)
    db.execute("PRAGMA wal_autocheckpoint = 0")
    db.execute("INSERT INTO _replicad_meta (key, value) VALUES ('note', 'x')")
    wal = (folder / "replica.db-wal").read_bytes()
    db.close()  # checkpoints and removes the WAL: put the same one back
    (folder / "replica.db-wal").write_bytes(wal)
    (folder / "replica.db-wal").chmod(0o644)
    (folder / "replica.db-shm").unlink(missing_ok=True)
    status = as_nobody("status", folder=folder)
    assert status.returncode == 2
    (line,) = status.stderr.strip().splitlines()
    assert "replica.db-shm" in line and str(folder) in line
