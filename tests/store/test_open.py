"""Opening the replica: lock, migrations, foreign and newer files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from replicad.store import Replica, ReplicaBusy, ReplicaRefused
from replicad.store.schema import APPLICATION_ID, SCHEMA_VERSION


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


async def test_v1_replica_migrates_keeping_rows(tmp_path: Path) -> None:
    """A schema-1 replica is migrated: rows kept, tables become writable push sources."""
    from replicad.store import PushSource
    from replicad.store.schema import MIGRATIONS

    path = tmp_path / "r.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(MIGRATIONS[0])
    db.executescript(
        f"""
        PRAGMA application_id = {APPLICATION_ID};
        CREATE TABLE contact (id INTEGER UNIQUE, _internal_id TEXT NOT NULL UNIQUE,
            _revision INTEGER NOT NULL DEFAULT 0, _synced_at TEXT,
            _pending INTEGER NOT NULL DEFAULT 0, name, tags);
        INSERT INTO _replicad_types VALUES ('contact', 'contact', 'mirror', 'now');
        INSERT INTO _replicad_fields VALUES ('contact', 'name', 'name', 0);
        INSERT INTO _replicad_fields VALUES ('contact', 'tags', 'tags', 1);
        INSERT INTO contact VALUES (1, 'i1', 5, 'now', 0, 'Ada', '["a"]');
        CREATE VIEW my_contacts AS SELECT name FROM contact;
        CREATE INDEX my_idx ON contact (name);
        PRAGMA user_version = 1;
        """
    )
    db.close()
    async with await Replica.open(path) as replica:
        await replica.register_push([PushSource("out", "contact")])
        app = sqlite3.connect(path, isolation_level=None)
        app.execute("INSERT INTO contact (name) VALUES ('Bo')")
        rows = app.execute("SELECT id, _internal_id, _revision, name, _pending FROM contact")
        got = rows.fetchall()
        assert got[0] == (1, "i1", 5, "Ada", 0) and got[1][3:] == ("Bo", 1)
        assert app.execute("SELECT count(*) FROM replicad_outbox").fetchone()[0] == 1
        # An app's view and index survive; object/array fields are known as JSON again.
        assert app.execute("SELECT count(*) FROM my_contacts").fetchone()[0] == 2
        assert app.execute("SELECT count(*) FROM sqlite_master WHERE name = 'my_idx'").fetchone()[0]
        kinds = dict(app.execute("SELECT col, kind FROM _replicad_fields").fetchall())
        assert kinds == {"name": None, "tags": "json"}
        app.close()


async def test_success_clears_the_last_error_and_a_dead_cycle_shows_interrupted(
    tmp_path: Path,
) -> None:
    """A success after a failure leaves no stale last_error; a "syncing" state that no
    process holds reads as "interrupted" in status."""
    from replicad.store.status import read_status

    path = tmp_path / "r.db"
    replica = await Replica.open(path)
    await replica.register_sync("mirror", "pull", "crm")
    await replica.sync_finished("mirror", "remote broke")
    await replica.sync_finished("mirror", None)
    await replica.sync_started("mirror", None)
    rows = await replica.db.execute_fetchall("SELECT last_error FROM replicad_syncs")
    assert list(rows) == [(None,)]
    await replica.close()
    (sync,) = read_status(path)["syncs"]
    assert sync["state"] == "interrupted" and sync["last_error"] is None


async def test_opening_and_registering_wait_while_an_app_holds_the_write_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app holding a write transaction longer than the busy timeout makes opening
    (and registering syncs, as a reload does) wait and say so, never fail."""
    import sqlite3 as sqlite

    import anyio

    from replicad.store import replica as replica_module

    path = tmp_path / "r.db"
    await (await Replica.open(path)).close()
    monkeypatch.setattr(replica_module, "BUSY_TIMEOUT_MS", 100)
    waits: list[str] = []
    app = sqlite.connect(path, isolation_level=None, check_same_thread=False)

    async def hold(seconds: float) -> None:
        app.execute("BEGIN IMMEDIATE")
        app.execute("INSERT INTO _replicad_meta (key, value) VALUES ('app', 'x')")
        await anyio.sleep(seconds)
        app.execute("ROLLBACK")

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold, 1.5)
        await anyio.sleep(0.1)
        replica = await Replica.open(path, waits.append)
    assert waits and "another program holds the write lock" in waits[0]
    try:
        waits.clear()
        await replica.db.execute("PRAGMA busy_timeout = 100")
        async with anyio.create_task_group() as tg:
            tg.start_soon(hold, 1.5)
            await anyio.sleep(0.1)
            await replica.register_sync("mirror", "pull", "crm")
        assert waits and "register the syncs" in waits[0]
        # A pull's naming is applied at start and reload too: it waits the same way.
        from replicad.store import PageBatch, PullTarget, RecordChange
        from replicad.store.naming import Naming

        change = RecordChange("contact", 1, 1, "k1", False, {"id": 1})
        await replica.apply_page(PullTarget("mirror", "crm"), PageBatch([change]))
        naming = Naming(mapped={"contact": {"email": "mail"}}, style="snake_case")
        waits.clear()
        async with anyio.create_task_group() as tg:
            tg.start_soon(hold, 1.5)
            await anyio.sleep(0.1)
            assert await replica.add_mapped_columns("mirror", naming) == ["contact.mail"]
            await replica.naming_applied("mirror", naming)
        assert waits and "add mapped columns" in waits[0]
    finally:
        await replica.close()
        app.close()


async def test_files_the_daemon_creates_are_private(tmp_path: Path) -> None:
    """The replica, its WAL and shared memory, and the lock are 0600 under a usual
    umask (the replica holds account data)."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        replica = await Replica.open(tmp_path / "r.db")
        await replica.register_sync("mirror", "pull", "crm")
        try:
            names = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        finally:
            await replica.close()
    finally:
        os.umask(old)
    assert {"r.db", "r.db-wal", "r.db-shm", "r.db.lock"} <= names.keys()
    assert all(mode == 0o600 for mode in names.values()), names


async def test_v4_creates_in_doubt_become_their_own_state(tmp_path: Path) -> None:
    """Migrating to v5 and on: a create kept rejected while waiting for its record
    becomes in_doubt; one an edit requeued (what it sent is gone) too, with a reason
    that says to check the destination (v5 made it rejected, which `retry --all` would
    post again); an ordinary rejection and an accepted create stay."""
    path = tmp_path / "r.db"
    async with await Replica.open(path):
        pass
    db = sqlite3.connect(path, isolation_level=None)
    rows = [
        ("a", "insert", "rejected", 1),
        ("b", "insert", "pending", 1),
        ("c", "insert", "rejected", 0),
        ("d", "insert", "confirmed", 1),
        ("e", "update", "rejected", 0),
    ]
    db.executemany(
        "INSERT INTO _replicad_outbox (tbl, internal_id, op, state, awaiting_id, created_at, "
        "updated_at) VALUES ('contact', ?, ?, ?, ?, 'now', 'now')",
        rows,
    )
    db.execute("PRAGMA user_version = 4")
    db.close()
    async with await Replica.open(path) as replica:
        # `retry --all` requeues the rejections only.
        assert await replica.requeue_rejected(None) == 2
    db = sqlite3.connect(path)
    got = db.execute(
        "SELECT internal_id, state FROM _replicad_outbox WHERE state != 'pending' ORDER BY seq"
    ).fetchall()
    (reason,) = db.execute("SELECT reason FROM _replicad_outbox WHERE internal_id = 'b'").fetchone()
    db.close()
    assert "check there for the record, then `replicad retry ENTRY`" in reason
    assert got == [
        ("a", "in_doubt"),
        ("b", "in_doubt"),
        ("d", "confirmed"),
    ]


async def test_v5_makes_one_guard_trigger_per_statement_kind(tmp_path: Path) -> None:
    """Migrating to v5 replaces a type table's separate guard triggers with one per
    statement kind, and the guards still refuse what they refused."""
    from tests.store.conftest import TARGET, page, up

    path = tmp_path / "r.db"
    async with await Replica.open(path) as replica:
        await replica.apply_page(TARGET, page(up("contact", 1, 1, name="Ada")))
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(
        'CREATE TRIGGER "_replicad_guard_insert_contact" BEFORE INSERT ON contact '
        "BEGIN SELECT 1; END"
    )
    db.execute("PRAGMA user_version = 4")
    db.close()
    async with await Replica.open(path):
        pass
    db = sqlite3.connect(path, isolation_level=None)
    names = {
        n
        for (n,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'contact'"
        )
    }
    assert "_replicad_guard_insert_contact" not in names
    assert {f"_replicad_check_{k}_contact" for k in ("insert", "update", "delete")} <= names
    with pytest.raises(sqlite3.IntegrityError, match="no push sync carries"):
        db.execute("UPDATE contact SET name = 'x'")
    db.close()


async def test_v5_migrates_a_replica_whose_type_table_an_app_dropped(tmp_path: Path) -> None:
    """A v4 file one of whose type tables an app dropped still opens: the migration
    leaves that table to the repair at open, which makes it again."""
    from tests.store.conftest import TARGET, page, up

    path = tmp_path / "r.db"
    async with await Replica.open(path) as replica:
        await replica.apply_page(TARGET, page(up("contact", 1, 1, name="Ada")))
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DROP TABLE contact")
    db.execute("PRAGMA user_version = 4")
    db.close()
    async with await Replica.open(path):
        pass
    db = sqlite3.connect(path, isolation_level=None)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    names = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'contact'")}
    db.close()
    assert "contact" in names and "_replicad_check_insert_contact" in names
