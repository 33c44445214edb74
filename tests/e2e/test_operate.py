"""The operator's commands through the real CLI: backup, doctor, conflicts, resync."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    TOKEN,
    app_write,
    assert_replica_matches,
    emulator,
    query,
    query_when_ready,
    replicad,
    start_replicad,
    wait_for,
    write_config,
)
from tests.e2e.test_lifecycle import corrupt_middle

PUSH = {"source": "contact", "object": "crm-contact", "interval": "200ms"}


def run(*args: str, expect: int = 0) -> str:
    done = replicad(*args)
    assert done.returncode == expect, done.stdout + done.stderr
    return done.stdout


def test_backup_while_the_daemon_runs_then_restore(tmp_path: Path) -> None:
    """`backup` copies the replica consistently while the daemon runs (0600); restored
    in place — renamed there, or copied over the original's own file — the copy takes
    its own identity and converges with the remote."""
    db = tmp_path / "replica.db"
    with emulator(records=1500) as emu:
        cfg = write_config(tmp_path, emu.url)
        daemon = start_replicad("run", "--config", str(cfg))
        try:
            wait_for(
                lambda: (
                    query_when_ready(
                        db, "SELECT count(*) FROM replicad_syncs WHERE last_success IS NOT NULL"
                    )
                    == [(1,)]
                )
            )
            out = run("backup", str(tmp_path / "b.db"), "--config", str(cfg))
            assert "backed up" in out
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(20) == 0
        copy = tmp_path / "b.db"
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
        assert query(copy, "PRAGMA integrity_check") == [("ok",)]
        assert query(copy, "SELECT count(*) FROM contact") == query(
            db, "SELECT count(*) FROM contact"
        )
        run("backup", str(copy), "--config", str(cfg), expect=2)  # never overwrites
        emu.control.mutate(random=25, seed=3)
        for p in tmp_path.glob("replica.db*"):
            p.unlink()
        copy.rename(db)
        done = replicad("sync", "--once", "--no-progress", "--config", str(cfg))
        assert done.returncode == 0 and "replica.copy" in done.stderr
        assert_replica_matches(db, emu)
        # Copied back over the original's own file (same inode): still a copy.
        run("backup", str(tmp_path / "b2.db"), "--config", str(cfg))
        emu.control.mutate(random=25, seed=4)
        run("sync", "--once", "--no-progress", "--config", str(cfg))  # acks the changes
        emu.control.mutate(random=25, seed=5)
        inode = db.stat().st_ino
        for p in tmp_path.glob("replica.db-*"):
            p.unlink()
        shutil.copyfile(tmp_path / "b2.db", db)
        assert db.stat().st_ino == inode
        done = replicad("sync", "--once", "--no-progress", "--config", str(cfg))
        assert done.returncode == 0 and "replica.copy" in done.stderr
        assert_replica_matches(db, emu)


def test_doctor_finds_and_repairs_dropped_triggers_and_views(tmp_path: Path) -> None:
    """An app dropped a capture trigger and a status view: doctor says so (exit 1),
    --repair restores both, and edits are captured again."""
    db = tmp_path / "replica.db"
    with emulator(records=100) as emu:
        cfg = write_config(tmp_path, emu.url, push=PUSH)
        run("sync", "--once", "--no-progress", "--config", str(cfg))
        assert "ok" in run("doctor", "--config", str(cfg))
        con = sqlite3.connect(db)
        con.execute('DROP TRIGGER "_replicad_capture_insert_contact"')
        con.execute("DROP VIEW replicad_outbox")
        con.close()
        out = run("doctor", "--config", str(cfg), expect=1)
        assert "FAIL views" in out and "_replicad_capture_insert_contact missing" in out
        report = json.loads(run("doctor", "--json", "--config", str(cfg), expect=1))
        assert not report["healthy"]
        out = run("doctor", "--repair", "--config", str(cfg))
        assert "repaired:" in out and "FAIL" not in out
        app_write(db, "INSERT INTO contact (first_name, email) VALUES ('Doc', 'doc@example.org')")
        assert query(db, "SELECT op FROM replicad_outbox") == [("insert",)]


def test_doctor_repair_salvages_a_corrupt_replica_keeping_local_edits(tmp_path: Path) -> None:
    """A replica damaged in the middle: doctor --repair builds a new one from what can
    be read (the unsent local edit first), keeps the damaged file, and the next sync
    pulls everything again and pushes the edit."""
    db = tmp_path / "replica.db"
    with emulator(records=3000) as emu:
        cfg = write_config(tmp_path, emu.url, push=PUSH)
        run("sync", "--once", "--no-progress", "--config", str(cfg))
        app_write(db, "INSERT INTO contact (first_name, email) VALUES ('Keep', 'keep@example.org')")
        corrupt_middle(db)
        assert "corrupt" in replicad("sync", "--once", "--config", str(cfg)).stderr
        out = run("doctor", "--repair", "--config", str(cfg))
        assert "rows salvaged" in out and "kept as" in out
        assert list(tmp_path.glob("replica.db.corrupt-*"))
        run("sync", "--once", "--no-progress", "--config", str(cfg))
        state = emu.control.state()["records"]["contact"]
        assert [d for d in state.values() if d.get("email") == "keep@example.org"]
        assert_replica_matches(db, emu)


def test_conflicts_are_listed_and_resolved(tmp_path: Path) -> None:
    """A conflict (local edit vs remote change) is listed; resolving it keeping the
    remote value writes that value locally and upstream and closes the entry."""
    db = tmp_path / "replica.db"
    with emulator(records=100) as emu:
        cfg = write_config(tmp_path, emu.url, push=PUSH)
        run("sync", "--once", "--no-progress", "--config", str(cfg))
        (rid,) = query(db, "SELECT id FROM contact ORDER BY id LIMIT 1")[0]
        app_write(db, f"UPDATE contact SET first_name = 'Local' WHERE id = {rid}")
        emu.control.mutate([{"op": "update", "type": "contact", "id": rid,
                             "data": {"first_name": "Remote"}}])  # fmt: skip
        emu.control.faults({"endpoint": "push", "action": "status", "status": 503, "times": 0})
        replicad("sync", "--once", "--no-progress", "--config", str(cfg))
        emu.control.clear_faults()
        (entry,) = json.loads(run("conflicts", "--json", "--config", str(cfg)))
        assert (entry["field"], entry["local_value"], entry["remote_value"]) == (
            "first_name", "Local", "Remote")  # fmt: skip
        out = run("conflicts", "resolve", str(entry["seq"]), "--keep", "remote",
                  "--config", str(cfg))  # fmt: skip
        assert "kept remote" in out
        assert query(db, f"SELECT first_name FROM contact WHERE id = {rid}") == [("Remote",)]
        run("sync", "--once", "--no-progress", "--config", str(cfg))
        assert emu.control.state()["records"]["contact"][str(rid)]["first_name"] == "Remote"
        assert "no open conflicts" in run("conflicts", "--config", str(cfg))
        run("conflicts", "resolve", str(entry["seq"]), "--keep", "local", "--config", str(cfg),
            expect=2)  # fmt: skip
        assert_replica_matches(db, emu)


def test_resync_pulls_everything_again(tmp_path: Path) -> None:
    """`resync` forgets the device identity: the next sync pulls everything, merging,
    and removes what the remote no longer has."""
    db = tmp_path / "replica.db"
    with emulator(records=400) as emu:
        cfg = write_config(tmp_path, emu.url)
        run("sync", "--once", "--no-progress", "--config", str(cfg))
        # A row the remote never had (as if a delete had been missed).
        con = sqlite3.connect(db)
        con.execute("INSERT INTO _replicad_applying VALUES (1)")
        con.execute("INSERT INTO contact (id, _internal_id, _revision, _pending) "
                    "VALUES (999999, 'ghost', 1, 0)")  # fmt: skip
        con.execute("DELETE FROM _replicad_applying")
        con.commit()
        con.close()
        assert "resync of mirror started" in run("resync", "--config", str(cfg))
        status = json.loads(run("status", "--json", "--config", str(cfg)))
        (mirror,) = [s for s in status["syncs"] if s["sync"] == "mirror"]
        assert mirror["resync_since"]
        assert "full pull      running since" in run("status", "--config", str(cfg))
        run("resync", "nosuch", "--config", str(cfg), expect=2)
        done = replicad("sync", "--once", "--no-progress", "--config", str(cfg))
        assert done.returncode == 0 and "pull.resync_done" in done.stderr
        assert query(db, "SELECT count(*) FROM contact WHERE id = 999999") == [(0,)]
        status = json.loads(run("status", "--json", "--config", str(cfg)))
        assert all("resync_since" not in s for s in status["syncs"])
        assert_replica_matches(db, emu)


def test_a_full_pull_under_a_pinned_device_is_refused_and_removes_nothing(
    tmp_path: Path,
) -> None:
    """With `device_uuid` set in the config, a resync, or a copy of the file, cannot
    take a new device: `resync` refuses (exit 2), and a copy's pull says so (exit 2);
    nothing is removed (before, the sweep took every row the queue did not bring
    again). Without the key (as the errors advise), a new device pulls everything, and
    the replica equals the remote."""
    db = tmp_path / "replica.db"
    pinned = "0f6ad0a2-3c4e-4a8c-9d1e-2b7f5e9c1a11"
    with emulator(records=120) as emu:
        cfg = write_config(tmp_path, emu.url, device_uuid=pinned)
        run("sync", "--once", "--no-progress", "--config", str(cfg))
        before = query(db, "SELECT count(*) FROM contact")
        refused = replicad("resync", "--config", str(cfg))
        assert refused.returncode == 2, refused.stderr
        assert "connections.crm.device_uuid pins the device" in refused.stderr
        run("sync", "--once", "--no-progress", "--config", str(cfg))  # nothing asked
        shutil.copyfile(db, tmp_path / "c.db")
        db.unlink()
        (tmp_path / "c.db").rename(db)
        refused = replicad("sync", "--once", "--no-progress", "--config", str(cfg))
        assert refused.returncode == 2, refused.stderr
        assert "connections.crm.device_uuid pins the device" in refused.stderr
        assert query(db, "SELECT count(*) FROM contact") == before
        cfg.write_text(cfg.read_text().replace(f'device_uuid = "{pinned}"\n', ""))
        assert "device_uuid" not in cfg.read_text()
        emu.control.mutate(random=6, seed=3)
        run("sync", "--once", "--no-progress", "--config", str(cfg))
        assert_replica_matches(db, emu)
        status = json.loads(run("status", "--json", "--config", str(cfg)))
        assert all("resync_since" not in s for s in status["syncs"])
        # Pinned to a device of its own, as the refusal advises, resync goes through.
        other = 'device_uuid = "7d1c4f0e-2b9a-4e61-8f3d-5a6c7b8e9f00"\n'
        cfg.write_text(cfg.read_text().replace('kind = "sell"\n', 'kind = "sell"\n' + other))
        assert other in cfg.read_text()
        run("resync", "--config", str(cfg))
        emu.control.mutate(random=6, seed=4)
        run("sync", "--once", "--no-progress", "--config", str(cfg))
        assert_replica_matches(db, emu)


def test_version_and_log_level_flags(tmp_path: Path) -> None:
    """--version prints the version (exit 0); -v shows the debug events of a sync, -q
    silences its info lines; the result is the same."""
    assert run("--version").startswith("replicad ")
    with emulator(records=300) as emu:
        cfg = write_config(tmp_path, emu.url)
        loud = replicad("-vv", "sync", "--once", "--no-progress", "--config", str(cfg))
        assert loud.returncode == 0 and '"pull.page"' in loud.stderr  # a debug event
        emu.control.mutate(random=5, seed=2)
        quiet = replicad("-q", "sync", "--once", "--no-progress", "--config", str(cfg))
        assert quiet.returncode == 0 and '"info"' not in quiet.stderr
        assert_replica_matches(tmp_path / "replica.db", emu)


def test_files_are_private_or_group_readable_under_the_system_units_umask(
    tmp_path: Path,
) -> None:
    """The replica and its lock are 0600 under a usual umask, 0640 under the system
    unit's UMask=0027 (its group may read the replica), never world-readable."""
    import os
    import subprocess

    from tests.e2e.harness import REPLICAD, cli_env

    with emulator(records=50) as emu:
        for umask, mode in ((0o022, 0o600), (0o027, 0o640)):
            folder = tmp_path / f"u{umask:o}"
            folder.mkdir()
            cfg = write_config(folder, emu.url)
            done = subprocess.run(
                [REPLICAD, "sync", "--once", "--no-progress", "--config", str(cfg)],
                capture_output=True, text=True, env=cli_env(), timeout=60,
                preexec_fn=lambda u=umask: os.umask(u),  # type: ignore[misc]
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            for name in ("replica.db", "replica.db.lock"):
                got = stat.S_IMODE((folder / name).stat().st_mode)
                assert got == mode, (umask, name, oct(got))


def test_a_push_source_no_pull_makes_is_refused_and_a_coming_one_is_named(
    tmp_path: Path,
) -> None:
    """A push `source` naming no table and no type the pull brings is refused by `sync`
    and `validate` (exit 2, one line naming the key); a type Sell sends that has not
    arrived yet (`order`) runs, and `validate` says plainly the table is not there yet."""
    with emulator(records=50) as emu:
        push = {"source": "payments", "object": "crm-contact", "interval": "200ms"}
        cfg = write_config(tmp_path, emu.url, push=push)
        for args in (("sync", "--once", "--no-progress"), ("validate",)):
            done = replicad(*args, "--config", str(cfg))
            assert done.returncode == 2, done.stdout + done.stderr
            assert "syncs.up.source: the replica has no table 'payments'" in (
                done.stderr + done.stdout
            )
        push = {"source": "order", "object": "crm-contact", "interval": "200ms"}
        cfg = write_config(tmp_path, emu.url, push=push)
        for _ in range(2):  # the second start knows the pulled tables
            done = replicad("sync", "--once", "--no-progress", "--config", str(cfg))
            assert done.returncode == 0, done.stderr
        assert "push.source_missing" in done.stderr
        said = replicad("validate", "--config", str(cfg))
        assert said.returncode == 0
        assert "WARNING: the replica has no table 'order' yet" in said.stdout
        report = json.loads(replicad("validate", "--json", "--config", str(cfg)).stdout)
        assert report["data"]["syncs"]["up"]["warning"] == "no table 'order' in the replica"


async def test_a_resync_landing_while_a_cycle_starts_runs_with_a_new_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`replicad resync` committed after a cycle made its client (with the device the
    resync replaces) and before it read the request: the cycle makes a new client and
    runs the full pull, not failing as if the config pinned the device."""
    from replicad.daemon.config import load_config
    from replicad.daemon.engine import Engine, open_engine
    from replicad.store.operate import resync_at

    with emulator(records=150) as emu:
        cfg = write_config(tmp_path, emu.url)
        monkeypatch.setenv("CRM_TOKEN", TOKEN)
        config = load_config(cfg)
        sync = next(s for s in config.syncs.values() if s.direction == "pull")
        conn = config.connections[sync.connection]
        async with open_engine(config) as engine:
            await engine.pull(sync)
            made = Engine.client
            before = (await engine.client(conn)).identity

            async def client_then_resync(self: Engine, c: Any) -> Any:
                client = await made(self, c)
                resync_at(config.replica_path, [c.name])  # from another process
                monkeypatch.setattr(Engine, "client", made)  # once
                return client

            monkeypatch.setattr(Engine, "client", client_then_resync)
            outcome = await engine.pull(sync)
            assert outcome.items >= 150
            assert (await engine.client(conn)).identity != before
            assert await engine.replica.resync_since(conn.name) is None
        assert_replica_matches(tmp_path / "replica.db", emu)
