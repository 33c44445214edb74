"""End to end: the real emulator under uvicorn, the real ``replicad`` as a subprocess."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from replicad.daemon.oneshot import HOLDER_ENDS_WITHIN
from replicad.store.lock import is_held
from tests.e2e.harness import (
    PROFILES,
    TOKEN,
    assert_replica_matches,
    emulator,
    query,
    replica_state,
    replicad,
    start_replicad,
    wait_for,
    write_config,
)


def _queued(emu_stats: dict[str, object]) -> int:
    devices = emu_stats["devices"]
    assert isinstance(devices, dict)
    return sum(d["queued"] for d in devices.values())


@pytest.mark.parametrize("profile", PROFILES)
def test_initial_sync_equals_emulator_and_acks_everything(tmp_path: Path, profile: str) -> None:
    """An initial sync copies every record field by field and leaves nothing unacked."""
    with emulator(records=1500, profile=profile) as emu:
        cfg = write_config(tmp_path, emu.url)
        done = replicad("sync", "--once", "--config", str(cfg))
        assert done.returncode == 0, done.stderr
        assert "1500 items" in done.stdout
        assert_replica_matches(tmp_path / "replica.db", emu)
        stats = emu.control.stats()
        assert _queued(stats) == 0
        requests = stats["requests"]
        pages = 15
        # start + pages + final 204 + acks (batched: 2 for 1500 keys) + a closing start.
        assert requests["fetch"] == pages + 1
        assert requests["ack"] <= 2


def test_remote_changes_then_resync(tmp_path: Path) -> None:
    """Creates, updates (with new fields) and deletes upstream reach the replica."""
    with emulator(records=800) as emu:
        cfg = write_config(tmp_path, emu.url)
        assert replicad("sync", "--once", "--config", str(cfg)).returncode == 0
        emu.control.mutate(
            [
                {"op": "update", "type": "contact", "id": 3, "data": {"loyalty": {"tier": 2}}},
                {"op": "delete", "type": "deal", "id": 1},
                {"op": "create", "type": "lead", "data": {"first_name": "New"}},
            ],
            random=150,
            seed=9,
        )
        done = replicad("sync", "--once", "--config", str(cfg))
        assert done.returncode == 0, done.stderr
        assert_replica_matches(tmp_path / "replica.db", emu)
        state = replica_state(tmp_path / "replica.db")
        assert 1 not in state["deal"]
        assert state["contact"][3]["loyalty"] == '{"tier":2}'
        assert _queued(emu.control.stats()) == 0


def test_device_uuid_stable_across_runs(tmp_path: Path) -> None:
    """Runs reuse one device UUID, so the server never re-sends everything."""
    with emulator(records=300) as emu:
        cfg = write_config(tmp_path, emu.url)
        for _ in range(3):
            assert replicad("sync", "--once", "--config", str(cfg)).returncode == 0
        stats = emu.control.stats()
        assert len(stats["devices"]) == 1
        # Later runs found nothing new: one start each, answered 204.
        assert stats["requests"]["fetch"] == 3 + 1


def test_token_never_in_output_or_replica(tmp_path: Path) -> None:
    """Neither logs, errors, status nor the replica file contain the token."""
    with emulator(records=200) as emu:
        cfg = write_config(tmp_path, emu.url)
        emu.control.faults({"endpoint": "fetch", "action": "status", "status": 503, "times": 2})
        runs = [
            replicad("--log-level", "debug", "sync", "--once", "--config", str(cfg)),
            replicad("status", "--json", "--config", str(cfg)),
            replicad("sync", "--once", "--config", str(cfg), token=TOKEN[::-1]),
        ]
        assert runs[0].returncode == 0 and runs[2].returncode == 3
        assert "token rejected or missing the sync scope" in runs[2].stderr
        for run in runs:
            assert TOKEN not in run.stdout + run.stderr
            assert TOKEN[::-1] not in run.stdout + run.stderr
        for f in tmp_path.iterdir():
            assert TOKEN.encode() not in f.read_bytes(), f.name


def test_unreachable_remote_exits_4(tmp_path: Path) -> None:
    """Network failures outlasting the bounded retries exit 4 with one clear line."""
    cfg = write_config(tmp_path, "http://127.0.0.1:9", max_retries=2)
    done = replicad("sync", "--once", "--config", str(cfg))
    assert done.returncode == 4
    assert "gave up after 2 retries" in done.stderr
    assert "Traceback" not in done.stderr
    status = json.loads(replicad("status", "--json", "--config", str(cfg)).stdout)
    assert status["syncs"][0]["state"] == "failing"


def test_faults_are_survived(tmp_path: Path) -> None:
    """5xx, 429 with Retry-After, truncated bodies, empty pages, failed objects and
    malformed items: the sync completes, equals the emulator, quarantines the bad, and
    says so with exit code 5 (done, but items were quarantined)."""
    with emulator(records=1200) as emu:
        emu.control.faults(
            {"endpoint": "start", "action": "status", "status": 500},
            {"endpoint": "fetch", "action": "status", "status": 429, "retry_after": 1, "skip": 1},
            {"endpoint": "fetch", "action": "truncate", "skip": 3},
            {"endpoint": "fetch", "action": "empty_page", "skip": 4, "times": 2},
            {"endpoint": "fetch", "action": "failed_objects", "count": 3, "skip": 5},
            {"endpoint": "fetch", "action": "malformed", "skip": 6},
            {"endpoint": "ack", "action": "status", "status": 502},
        )
        cfg = write_config(tmp_path, emu.url)
        done = replicad("sync", "--once", "--config", str(cfg))
        assert done.returncode == 5, done.stderr
        assert "replicad: done, but 4 remote items quarantined" in done.stderr
        assert_replica_matches(tmp_path / "replica.db", emu)
        db = sqlite3.connect(tmp_path / "replica.db")
        reasons = [r[0] for r in db.execute("SELECT reason FROM replicad_quarantine")]
        assert len(reasons) == 4, reasons
        row = db.execute("SELECT failed_objects, pending_acks FROM replicad_syncs").fetchone()
        assert row == (0, 0)
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        assert "contact" in names and not any("DROP" in n for n in names)


def test_second_process_is_refused_and_sync_asks_the_daemon(tmp_path: Path) -> None:
    """While `replicad run` holds the replica, a second `run` exits 2 naming its pid,
    and `sync --once` asks the daemon for a cycle and reports its result."""
    with emulator(records=100) as emu:
        cfg = write_config(tmp_path, emu.url)
        cfg.write_text(cfg.read_text().replace('interval = "1s"', 'interval = "1h"'))
        daemon = start_replicad("run", "--config", str(cfg))
        try:
            wait_for(lambda: _synced(tmp_path / "replica.db"))
            other = replicad("run", "--config", str(cfg))
            assert other.returncode == 2
            assert f"replicad process {daemon.pid}" in other.stderr
            emu.control.mutate([{"op": "update", "type": "contact", "id": 1,
                                 "data": {"name": "Asked"}}])  # fmt: skip
            asked = replicad("sync", "--once", "--config", str(cfg))
            assert asked.returncode == 0, asked.stderr
            assert "mirror: done by the running daemon" in asked.stdout
            assert _name(tmp_path / "replica.db") == "Asked"
            status = json.loads(replicad("status", "--json", "--config", str(cfg)).stdout)
            assert status["daemon"]["running"] and status["daemon"]["pid"] == daemon.pid
            assert status["daemon"]["healthy"] is True
            mirror = next(s for s in status["syncs"] if s["sync"] == "mirror")
            assert mirror["daemon"]["activity"] in ("idle", "pulling")
            # `resync` hands its full pull to the daemon too, and reports when it is
            # done: the row the remote never had is gone by then.
            ghost = sqlite3.connect(tmp_path / "replica.db", isolation_level=None)
            ghost.execute("BEGIN IMMEDIATE")
            ghost.execute("INSERT INTO _replicad_applying VALUES (1)")
            ghost.execute("INSERT INTO contact (id, _internal_id, _revision, _pending) "
                          "VALUES (999999, 'ghost', 1, 0)")  # fmt: skip
            ghost.execute("DELETE FROM _replicad_applying")
            ghost.execute("COMMIT")
            ghost.close()
            again = replicad("resync", "--config", str(cfg))
            assert again.returncode == 0, again.stderr
            assert "mirror: pulled everything again" in again.stdout
            assert query(tmp_path / "replica.db",
                         "SELECT count(*) FROM contact WHERE id = 999999") == [(0,)]  # fmt: skip
            assert_replica_matches(tmp_path / "replica.db", emu)
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(20) == 0


def test_run_pulls_at_interval_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`replicad run` picks up remote changes at its interval and exits 0 on SIGTERM."""
    with emulator(records=100) as emu:
        cfg = write_config(tmp_path, emu.url)
        daemon = start_replicad("run", "--config", str(cfg))
        try:
            wait_for(lambda: _synced(tmp_path / "replica.db"))
            emu.control.mutate([{"op": "update", "type": "contact", "id": 1,
                                 "data": {"name": "Changed"}}])  # fmt: skip
            wait_for(lambda: _name(tmp_path / "replica.db") == "Changed", timeout=20)
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(20) == 0
        assert_replica_matches(tmp_path / "replica.db", emu)


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    """A bad config exits 2 with the key in the message."""
    cfg = write_config(tmp_path, "http://127.0.0.1:9")
    cfg.write_text(cfg.read_text().replace('interval = "1s"', 'interval = "soon"'))
    done = replicad("sync", "--once", "--config", str(cfg))
    assert done.returncode == 2
    assert done.stderr.startswith("replicad: syncs.mirror.interval:")


def test_newer_replica_is_refused(tmp_path: Path) -> None:
    """A replica written by a newer replicad exits 2."""
    cfg = write_config(tmp_path, "http://127.0.0.1:9")
    db = sqlite3.connect(tmp_path / "replica.db")
    db.execute("PRAGMA application_id = 1380994116")
    db.execute("PRAGMA user_version = 999")
    db.close()
    done = replicad("sync", "--once", "--config", str(cfg))
    assert done.returncode == 2 and "newer replicad" in done.stderr


def _synced(path: Path) -> bool:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT last_success FROM replicad_syncs").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return False
    return bool(row and row[0])


def _name(path: Path) -> str | None:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT name FROM contact WHERE id = 1").fetchone()
    finally:
        db.close()
    return row[0] if row else None


def test_validate_checks_credentials_without_changes(tmp_path: Path) -> None:
    """validate accepts good credentials, exits 3 on a refused token, creates nothing."""
    with emulator(records=50) as emu:
        cfg = write_config(tmp_path, emu.url)
        good = replicad("validate", "--config", str(cfg))
        assert good.returncode == 0, good.stderr
        assert "connection crm: credentials accepted" in good.stdout
        bad = replicad("validate", "--config", str(cfg), token="x" * 64)
        assert bad.returncode == 3 and "token rejected" in bad.stderr
        assert not (tmp_path / "replica.db").exists()
        assert emu.control.stats()["requests"]["start"] == 0


def test_token_file_must_be_private(tmp_path: Path) -> None:
    """A token_file readable by group or others is refused with the fix to apply."""
    token = tmp_path / "crm.token"
    token.write_text(TOKEN)
    token.chmod(0o644)
    cfg = write_config(tmp_path, "http://127.0.0.1:9")
    cfg.write_text(cfg.read_text().replace('token_env = "CRM_TOKEN"', 'token_file = "crm.token"'))
    done = replicad("sync", "--once", "--config", str(cfg))
    assert done.returncode == 2
    assert "readable by group or others" in done.stderr and "chmod 600" in done.stderr


def test_outage_mid_session_exits_4_and_resumes(tmp_path: Path) -> None:
    """An outage in the middle of a session ends the cycle with exit 4; the next run
    completes the replica."""
    with emulator(records=1000) as emu:
        cfg = write_config(tmp_path, emu.url, max_retries=2)
        emu.control.faults(
            {"endpoint": "fetch", "action": "status", "status": 503, "skip": 3, "times": 0}
        )
        done = replicad("sync", "--once", "--config", str(cfg))
        assert done.returncode == 4
        assert "replicad: sync mirror: fetch: gave up after 2 retries" in done.stderr
        emu.control.clear_faults()
        assert replicad("sync", "--once", "--config", str(cfg)).returncode == 0
        assert_replica_matches(tmp_path / "replica.db", emu)


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    """With a terminal on stderr, `sync --once` draws a progress bar (rich, imported
    only then) and still ends with the summary and exit 0."""
    import os
    import pty
    import subprocess

    from tests.e2e.harness import REPLICAD

    with emulator(records=600) as emu:
        cfg = write_config(tmp_path, emu.url)
        leader, follower = pty.openpty()
        env = {**os.environ, "CRM_TOKEN": TOKEN, "COLUMNS": "100"}
        proc = subprocess.Popen(
            [REPLICAD, "sync", "--once", "--config", str(cfg)],
            stdout=subprocess.PIPE, stderr=follower, env=env,
        )  # fmt: skip
        os.close(follower)
        screen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            screen += chunk
        out, _ = proc.communicate(timeout=60)
        os.close(leader)
        assert proc.returncode == 0, screen.decode(errors="replace")
        assert "600 items" in out.decode()  # the summary stays on stdout
        assert b"mirror" in screen and b"\x1b[" in screen  # the bar, drawn with escapes
        assert_replica_matches(tmp_path / "replica.db", emu)


def test_rate_budget_is_kept_across_runs(tmp_path: Path) -> None:
    """Each run leaves the requests it made in the replica, and the next run takes
    them over, so restarts do not reset the remote's hourly budget."""
    with emulator(records=700) as emu:
        cfg = write_config(tmp_path, emu.url)
        totals = []
        for _ in range(2):
            emu.control.reset_stats()
            done = replicad("--log-level", "info", "sync", "--once", "--config", str(cfg))
            assert done.returncode == 0, done.stderr
            assert "ratelimit.state_ignored" not in done.stderr
            requests = emu.control.stats()["requests"]
            totals.append(sum(int(requests[k]) for k in ("start", "fetch", "ack")))
            db = sqlite3.connect(tmp_path / "replica.db")
            (saved,) = db.execute(
                "SELECT value FROM _replicad_meta WHERE key = 'rate_budget.crm'"
            ).fetchone()
            db.close()
            state = json.loads(saved)
            assert sum(n for _, n in state["sent"]) == sum(totals)


def test_a_pull_paced_by_its_budget_says_so(tmp_path: Path) -> None:
    """A small rate_limit sets the pace: while it does, `status` says so, the log
    says so (with the pace it allows), and every record still arrives."""
    import time

    with emulator(records=3000) as emu:
        cfg = write_config(tmp_path, emu.url, rate_limit="10/s")
        proc = start_replicad("--log-level", "info", "sync", "--once", "--no-progress",
                              "--config", str(cfg))  # fmt: skip
        said = ""
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            status = replicad("status", "--config", str(cfg))
            if "rate budget    pacing this pull" in status.stdout:
                said = status.stdout
                break
            time.sleep(0.2)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert said, "status never said the budget paces the pull"
        assert "pull.budget_wait" in err and "items_per_second" in err
        assert_replica_matches(tmp_path / "replica.db", emu)
        # Done: the status no longer says it.
        assert "rate budget" not in replicad("status", "--config", str(cfg)).stdout


def test_a_second_command_never_signals_a_one_shot_sync(tmp_path: Path) -> None:
    """While `sync --once` holds the replica, `sync` and `resync` do not send it the
    daemon's signals (its default action is to die): `sync` says who holds the replica
    (exit 2) or runs once it has finished; the first sync ends normally."""
    with emulator(records=4000, latency="40ms") as emu:
        cfg = write_config(tmp_path, emu.url)
        first = start_replicad("sync", "--once", "--no-progress", "--config", str(cfg))
        try:
            wait_for(lambda: _has_rows(tmp_path / "replica.db") or first.poll() is not None)
            assert first.poll() is None, "the first sync ended before the second started"
            second = replicad("sync", "--once", "--no-progress", "--config", str(cfg))
            assert second.returncode in (0, 2), second.stderr
            if second.returncode == 2:
                assert f"replicad process {first.pid}, a command other than the daemon" in (
                    second.stderr
                )
            again = replicad("resync", "--config", str(cfg))
            assert again.returncode == 0, again.stderr
            assert first.wait(60) == 0, first.stderr.read() if first.stderr else ""
        finally:
            if first.poll() is None:
                first.kill()
        done = replicad("sync", "--once", "--no-progress", "--config", str(cfg))
        assert done.returncode == 0, done.stderr
        assert_replica_matches(tmp_path / "replica.db", emu)


def _has_rows(db: Path) -> bool:
    try:
        return bool(query(db, "SELECT count(*) FROM contact")[0][0])
    except sqlite3.Error:
        return False


def test_sync_asks_a_daemon_that_is_still_starting(tmp_path: Path) -> None:
    """A daemon still opening the replica (an app holds its write lock) already holds
    it: `sync` asks it for the cycle (the daemon's lock says what it is) and reports
    the result once it runs, rather than refusing it as another command."""
    db = tmp_path / "replica.db"
    with emulator(records=50) as emu:
        cfg = write_config(tmp_path, emu.url)
        cfg.write_text(cfg.read_text().replace('interval = "1s"', 'interval = "1h"'))
        assert replicad("sync", "--once", "--no-progress", "--config", str(cfg)).returncode == 0
        app = sqlite3.connect(db, isolation_level=None)
        app.execute("BEGIN IMMEDIATE")
        daemon = start_replicad("run", "--config", str(cfg))
        try:
            wait_for(lambda: is_held(db) == daemon.pid)
            asking = start_replicad("sync", "--once", "--no-progress", "--config", str(cfg))
            # Longer than a command waits for another to finish: still asking.
            time.sleep(HOLDER_ENDS_WITHIN + 1)
            assert asking.poll() is None, asking.communicate()
            app.execute("ROLLBACK")
            out, err = asking.communicate(timeout=60)
            assert asking.returncode == 0, err
            assert "mirror: done by the running daemon" in out
        finally:
            app.close()
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(30) == 0
