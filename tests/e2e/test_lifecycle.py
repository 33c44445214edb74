"""The replica's lifecycle: copies (backup, cp, restore) and resync keep every file in step."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from tests.e2e.harness import (
    app_write,
    assert_replica_matches,
    emulator,
    query,
    replicad,
    write_config,
)


def sync(cfg: Path) -> str:
    done = replicad("sync", "--once", "--config", str(cfg), "--no-progress")
    assert done.returncode == 0, done.stderr
    return done.stderr


def backup(src: Path, dst: Path) -> None:
    """What `sqlite3 src ".backup dst"` does."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        a.backup(b)
    finally:
        a.close()
        b.close()


def test_a_copy_and_its_original_both_converge(tmp_path: Path) -> None:
    """A .backup copy takes its own identity and pulls everything again: after remote
    changes (and a delete the original drained first), copy and original both equal
    the remote; the copy keeps its unsent local edit."""
    orig_dir, copy_dir = tmp_path / "orig", tmp_path / "copy"
    orig_dir.mkdir()
    with emulator(records=300) as emu:
        orig = write_config(orig_dir, emu.url)
        sync(orig)
        backup(orig_dir / "replica.db", copy_dir / "replica.db")
        copy = write_config(copy_dir, emu.url)
        emu.control.mutate(
            [{"op": "delete", "type": "contact", "id": 3},
             {"op": "update", "type": "contact", "id": 4, "data": {"name": "Changed"}}],
            random=30, seed=5,
        )  # fmt: skip
        # The original drains the shared queue first (the delete included) ...
        sync(orig)
        assert_replica_matches(orig_dir / "replica.db", emu)
        # ... and the copy still converges: it is detected, pulls everything, and
        # removes what it did not get back.
        err = sync(copy)
        assert "replica.copy" in err and "pull.resync_done" in err
        assert_replica_matches(copy_dir / "replica.db", emu)
        emu.control.mutate(random=20, seed=6)
        sync(copy)
        sync(orig)
        assert_replica_matches(copy_dir / "replica.db", emu)
        assert_replica_matches(orig_dir / "replica.db", emu)
        # The original was never taken for a copy.
        assert "replica.copy" not in sync(orig)


def test_a_moved_file_is_not_a_copy_but_cp_is(tmp_path: Path) -> None:
    """Renaming the replica keeps its identity; `cp` makes a copy that resyncs."""
    with emulator(records=100) as emu:
        cfg = write_config(tmp_path, emu.url)
        sync(cfg)
        db = tmp_path / "replica.db"
        (tmp_path / "moved.db").unlink(missing_ok=True)
        db.rename(tmp_path / "moved.db")
        (tmp_path / "moved.db").rename(db)
        assert "replica.copy" not in sync(cfg)
        shutil.copy(db, tmp_path / "c.db")
        db.unlink()
        (tmp_path / "c.db").rename(db)
        app_write(db, "SELECT 1")
        assert "replica.copy" in sync(cfg)
        assert_replica_matches(db, emu)
        assert query(db, "SELECT count(*) FROM replicad_syncs") == [(1,)]


def corrupt_middle(db: Path) -> None:
    """Overwrite a page in the middle of the file, as a failing disk would."""
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = con.execute("PRAGMA page_size").fetchone()[0]
    pages = con.execute("PRAGMA page_count").fetchone()[0]
    con.close()
    with db.open("r+b") as f:
        f.seek(page * (pages // 2))
        f.write(b"\xa5" * page)


def test_a_corrupt_replica_is_never_synced_further(tmp_path: Path) -> None:
    """A replica damaged in the middle is refused at open: exit 2 naming `replicad
    doctor`, nothing applied or acknowledged."""
    with emulator(records=2000) as emu:
        cfg = write_config(tmp_path, emu.url)
        sync(cfg)
        emu.control.mutate(random=20, seed=9)
        corrupt_middle(tmp_path / "replica.db")
        acked = emu.control.stats()["acked_keys"]
        done = replicad("sync", "--once", "--config", str(cfg), "--no-progress")
        assert done.returncode == 2, done.stderr
        (line,) = [x for x in done.stderr.splitlines() if x.startswith("replicad:")]
        assert "corrupt" in line and "replicad doctor" in line
        assert emu.control.stats()["acked_keys"] == acked


def test_a_copy_keeps_its_unsent_edits_and_both_push_them_once(tmp_path: Path) -> None:
    """A copy taken while a local insert waited in the outbox keeps it and pushes it;
    the original pushes the same entry later: one remote record (the internal_id makes
    the second push an update of the first), one row in each replica."""
    orig_dir, copy_dir = tmp_path / "orig", tmp_path / "copy"
    orig_dir.mkdir()
    push = {"source": "contact", "object": "crm-contact", "interval": "200ms"}
    with emulator(records=100) as emu:
        orig = write_config(orig_dir, emu.url, push=push)
        sync(orig)
        app_write(
            orig_dir / "replica.db",
            "INSERT INTO contact (first_name, email, _internal_id) "
            "VALUES ('Kept', 'kept@copy.example', 'kept-1')",
        )
        backup(orig_dir / "replica.db", copy_dir / "replica.db")
        copy = write_config(copy_dir, emu.url, push=push)
        assert "replica.copy" in sync(copy)
        sync(orig)
        sync(copy)  # brings the original's (idempotent) push of the same entry
        state = emu.control.state()["records"]["contact"]
        remote = [r for r in state.values() if r.get("email") == "kept@copy.example"]
        assert len(remote) == 1
        for folder in (orig_dir, copy_dir):
            db = folder / "replica.db"
            rows = query(db, "SELECT id, _pending FROM contact WHERE _internal_id = 'kept-1'")
            assert rows == [(remote[0]["id"], 0)], folder
            assert_replica_matches(db, emu)
