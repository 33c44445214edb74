"""Opening the replica: lock, migrations, foreign and newer files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from store import Replica, ReplicaBusy, ReplicaRefused
from store.schema import APPLICATION_ID, SCHEMA_VERSION


async def test_fresh_replica_is_marked_and_in_wal(tmp_path: Path) -> None:
    """A new replica carries application_id, user_version and WAL mode."""
    async with await Replica.open(tmp_path / "r.db"):
        pass
    db = sqlite3.connect(tmp_path / "r.db")
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_second_opener_is_refused_naming_holder(tmp_path: Path) -> None:
    """While one process holds the replica, another open fails naming the pid."""
    import os

    async with await Replica.open(tmp_path / "r.db"):
        with pytest.raises(ReplicaBusy, match=str(os.getpid())):
            await Replica.open(tmp_path / "r.db")
    async with await Replica.open(tmp_path / "r.db"):
        pass


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A replica written by a newer replicad is refused."""
    async with await Replica.open(tmp_path / "r.db"):
        pass
    db = sqlite3.connect(tmp_path / "r.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(ReplicaRefused, match="newer replicad"):
        await Replica.open(tmp_path / "r.db")


async def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    """An SQLite file replicad did not create is left alone."""
    db = sqlite3.connect(tmp_path / "other.db")
    db.execute("CREATE TABLE t (x)")
    db.close()
    with pytest.raises(ReplicaRefused, match="did not create"):
        await Replica.open(tmp_path / "other.db")
