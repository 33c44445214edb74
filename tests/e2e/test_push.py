"""Local edits pushed upstream: the real emulator, the real CLI, edits from another process."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    PROFILES,
    TOKEN,
    app_write,
    assert_replica_matches,
    emulator,
    query,
    replicad,
    start_replicad,
    wait_for,
    write_config,
)

ENDGRATE = {"source": "contact", "object": "crm-contact", "interval": "200ms"}


def contacts_with(state: dict[str, Any], field: str, value: Any) -> list[int]:
    """Ids of the emulator's contacts whose ``field`` equals ``value``."""
    return [int(i) for i, d in state["records"]["contact"].items() if d.get(field) == value]


def sync(cfg: Path, expect: int = 0) -> str:
    """``replicad sync --once``; returns stderr after checking the exit code."""
    done = replicad("sync", "--once", "--config", str(cfg), "--no-progress")
    assert done.returncode == expect, done.stderr
    return done.stderr


@pytest.mark.parametrize("profile", PROFILES)
def test_insert_and_update_round_trip(tmp_path: Path, profile: str) -> None:
    """An inserted row becomes one remote record and gets its id; an update reaches the
    remote; after the pull each is still one local row, matching the remote."""
    db = tmp_path / "replica.db"
    with emulator(records=200, profile=profile) as emu:
        cfg = write_config(tmp_path, emu.url, push=ENDGRATE)
        sync(cfg)
        (first,) = query(db, "SELECT id FROM contact ORDER BY id LIMIT 1")[0]
        app_write(
            db,
            "INSERT INTO contact (first_name, last_name, email, _internal_id) "
            "VALUES ('Ada', 'Lovelace', 'ada@example.org', 'ada-1')",
            f"UPDATE contact SET last_name = 'Edited' WHERE id = {first}",
        )
        assert query(db, "SELECT _pending FROM contact WHERE _internal_id = 'ada-1'") == [(1,)]
        sync(cfg)
        state = emu.control.state()
        (remote_id,) = contacts_with(state, "email", "ada@example.org")
        assert state["records"]["contact"][str(remote_id)]["first_name"] == "Ada"
        assert state["records"]["contact"][str(first)]["last_name"] == "Edited"
        assert query(db, "SELECT id, _pending FROM contact WHERE _internal_id = 'ada-1'") == [
            (remote_id, 0)
        ]
        assert query(db, "SELECT count(*) FROM contact WHERE email = 'ada@example.org'") == [(1,)]
        assert query(db, "SELECT state FROM replicad_outbox") == [("confirmed",), ("confirmed",)]
        assert_replica_matches(db, emu)


@pytest.mark.parametrize("profile", PROFILES)
def test_cdm_insert_and_update_round_trip(tmp_path: Path, profile: str) -> None:
    """CDM writes: an insert becomes one remote record and one local row with its id,
    also when the destination accepts it with a 202 and no body (the pull brings the
    id); an update reaches the remote; the replica matches the remote."""
    db = tmp_path / "replica.db"
    push = {"source": "contact", "object": "contact", "interval": "200ms"}
    with emulator(records=100, profile=profile) as emu:
        cfg = write_config(tmp_path, emu.url, push=push, kind="cdm")
        sync(cfg)
        (first,) = query(db, "SELECT id FROM contact ORDER BY id LIMIT 1")[0]
        app_write(
            db,
            "INSERT INTO contact (first_name, last_name, email, _internal_id) "
            "VALUES ('Cy', 'Cdm', 'cy@example.org', 'cy-1')",
            f"UPDATE contact SET last_name = 'Edited' WHERE id = {first}",
        )
        sync(cfg)
        state = emu.control.state()
        (remote_id,) = contacts_with(state, "email", "cy@example.org")
        assert state["records"]["contact"][str(first)]["last_name"] == "Edited"
        assert query(db, "SELECT id, _pending FROM contact WHERE email = 'cy@example.org'") == [
            (remote_id, 0)
        ]
        assert query(db, "SELECT _internal_id FROM contact WHERE id = ?", remote_id) == [("cy-1",)]
        writes = [p["status"] for p in emu.control.pushes() if p["endpoint"] == "cdm_write"]
        assert sorted(writes) == ([202, 204] if profile == "variant" else [200, 201])
        assert_replica_matches(db, emu)


@pytest.mark.parametrize("profile", PROFILES)
def test_lost_response_creates_one_remote_record(tmp_path: Path, profile: str) -> None:
    """A transfer applied but answered 502, then retried, leaves exactly one record."""
    db = tmp_path / "replica.db"
    with emulator(records=100, profile=profile) as emu:
        cfg = write_config(tmp_path, emu.url, push={**ENDGRATE, "disable_upsert": True})
        sync(cfg)
        emu.control.faults({"endpoint": "transfer", "action": "lost_response", "times": 2})
        app_write(db, "INSERT INTO contact (first_name, email) VALUES ('Lost', 'lost@example.org')")
        sync(cfg)
        assert len(contacts_with(emu.control.state(), "email", "lost@example.org")) == 1
        assert [p["endpoint"] for p in emu.control.pushes()].count("transfer") >= 3
        assert query(db, "SELECT count(*) FROM contact WHERE email = 'lost@example.org'") == [(1,)]
        assert query(db, "SELECT count(*) FROM contact WHERE _pending = 1") == [(0,)]


@pytest.mark.parametrize("profile", PROFILES)
def test_cdm_lost_create_answer_without_lookup_leaves_one_row(tmp_path: Path, profile: str) -> None:
    """A CDM create carried out but answered 502, with no natural key to look it up:
    never sent again (it carries no idempotency key); the pull brings the record and
    it merges into the local row — one remote record, one row, no rejection left."""
    db = tmp_path / "replica.db"
    push = {"source": "contact", "object": "contact", "interval": "200ms"}
    with emulator(records=50, profile=profile) as emu:
        cfg = write_config(tmp_path, emu.url, push=push, kind="cdm")
        sync(cfg)
        emu.control.faults({"endpoint": "cdm_write", "action": "lost_response", "times": 1})
        app_write(db, "INSERT INTO contact (first_name, email) VALUES ('Lost', 'lost@cdm.org')")
        replicad("sync", "--once", "--no-progress", "--config", str(cfg))
        sync(cfg)  # the pull of the record that was written
        (remote_id,) = contacts_with(emu.control.state(), "email", "lost@cdm.org")
        assert query(db, "SELECT id, _pending FROM contact WHERE email = 'lost@cdm.org'") == [
            (remote_id, 0)
        ]
        assert query(db, "SELECT state FROM replicad_outbox") == [("confirmed",)]
        writes = [p for p in emu.control.pushes() if p["endpoint"] == "cdm_write"]
        assert len(writes) == 1
        assert_replica_matches(db, emu)


def _unknown_create_then_edit(tmp_path: Path, profile: str, lost: bool) -> None:
    """A CDM create whose record's id stays unknown (``lost``: its answer lost, no
    lookup; else accepted without an id, the variant's 202) is edited by the app before
    the pull brings the record; ends with one remote record carrying the edit."""
    db = tmp_path / "replica.db"
    push = {"source": "contact", "object": "contact", "interval": "200ms"}
    with emulator(records=50, profile=profile) as emu:
        cfg = write_config(tmp_path, emu.url, push=push, kind="cdm")
        sync(cfg)
        before = len(emu.control.state()["records"]["contact"])
        if lost:
            emu.control.faults({"endpoint": "cdm_write", "action": "lost_response", "times": 1})
        # The pull of this cycle fails: the record is not known when the app edits.
        emu.control.faults({"endpoint": "start", "action": "status", "status": 401, "times": 1})
        app_write(db, "INSERT INTO contact (first_name, email) VALUES ('Doubt', 'doubt@cdm.org')")
        first = replicad("sync", "--once", "--no-progress", "--config", str(cfg))
        assert first.returncode == 3, first.stderr
        if lost:
            shown = replicad("status", "--config", str(cfg))
            assert "1 rejected (1 in doubt)" in shown.stdout
            assert "`replicad retry ENTRY`" in shown.stdout
            # "All" never posts a create that may already exist upstream.
            done = replicad("retry", "--all", "--config", str(cfg))
            assert done.returncode == 0 and "left 1 create in doubt" in done.stdout
        app_write(db, "UPDATE contact SET first_name = 'Edited' WHERE email = 'doubt@cdm.org'")
        replicad("sync", "--once", "--no-progress", "--config", str(cfg))
        sync(cfg)  # the edit goes once the record is known
        (remote_id,) = contacts_with(emu.control.state(), "email", "doubt@cdm.org")
        assert len(emu.control.state()["records"]["contact"]) == before + 1
        assert emu.control.state()["records"]["contact"][str(remote_id)]["first_name"] == "Edited"
        assert query(db, "SELECT id, first_name, _pending FROM contact "
                         "WHERE email = 'doubt@cdm.org'") == [(remote_id, "Edited", 0)]  # fmt: skip
        assert query(db, "SELECT op, state FROM replicad_outbox ORDER BY entry") == [
            ("insert", "confirmed"),
            ("update", "confirmed"),
        ]
        assert_replica_matches(db, emu)


@pytest.mark.parametrize("profile", PROFILES)
def test_cdm_create_in_doubt_then_edited_leaves_one_record_with_the_edit(
    tmp_path: Path, profile: str
) -> None:
    """A CDM create answered 502 after it was carried out (no lookup), then edited
    before the pull brings it: the edit waits, the record is adopted, the edit updates
    it — one remote record, one row, the edit upstream."""
    _unknown_create_then_edit(tmp_path, profile, lost=True)


def test_cdm_create_accepted_without_id_then_edited_is_not_created_twice(
    tmp_path: Path,
) -> None:
    """A CDM create answered 202 without the record, then edited before the pull
    brings it: the edit waits for the id (sent without one it would be a second
    create), then updates the one record."""
    _unknown_create_then_edit(tmp_path, "variant", lost=False)


@pytest.mark.parametrize("profile", PROFILES)
def test_kill_9_while_pushing_inserts_then_resume(tmp_path: Path, profile: str) -> None:
    """kill -9 at random moments of a 400-insert push: each exists once remotely, and
    after a resume no row stays pending."""
    rng = random.Random(7)
    db = tmp_path / "replica.db"
    push = {**ENDGRATE, "disable_upsert": True, "batch_size": 20}
    with emulator(records=100, profile=profile) as emu:
        cfg = write_config(tmp_path, emu.url, push=push)
        sync(cfg)
        app_write(
            db,
            *(
                f"INSERT INTO contact (first_name, email) VALUES ('K{i}', 'k{i}@example.org')"
                for i in range(400)
            ),
        )
        # Slow transfers down so that kills land mid-batch and between batches (four
        # batches are out at once).
        emu.control.faults({"endpoint": "transfer", "action": "delay", "seconds": 0.6, "times": 0})
        kills = 0
        for _ in range(5):
            proc = start_replicad("sync", "--once", "--no-progress", "--config", str(cfg))
            time.sleep(rng.uniform(0.4, 1.2))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
        assert kills >= 3, "the push finished before it could be killed"
        emu.control.clear_faults()
        sync(cfg)
        state = emu.control.state()
        for i in range(400):
            assert len(contacts_with(state, "email", f"k{i}@example.org")) == 1, i
        assert query(db, "SELECT count(*) FROM contact WHERE _pending = 1 OR id IS NULL") == [(0,)]
        assert query(db, "SELECT count(*) FROM contact WHERE email LIKE 'k%@example.org'") == [
            (400,)
        ]
        assert_replica_matches(db, emu)


def test_pull_during_push_outage_merges_then_edit_arrives(tmp_path: Path) -> None:
    """While the destination is down, a pull merges field by field and journals the
    conflict; the local edit reaches the remote once it is back."""
    db = tmp_path / "replica.db"
    with emulator(records=100) as emu:
        cfg = write_config(tmp_path, emu.url, push=ENDGRATE)
        sync(cfg)
        (rid,) = query(db, "SELECT id FROM contact ORDER BY id LIMIT 1")[0]
        app_write(db, f"UPDATE contact SET first_name = 'Local' WHERE id = {rid}")
        emu.control.mutate(
            [{"op": "update", "type": "contact", "id": rid,
              "data": {"first_name": "Remote", "email": "remote@example.org"}}]
        )  # fmt: skip
        emu.control.faults({"endpoint": "push", "action": "status", "status": 503, "times": 0})
        err = sync(cfg, expect=4)
        assert "up" in err
        row = query(db, f"SELECT first_name, email, _pending FROM contact WHERE id = {rid}")
        assert row == [("Local", "remote@example.org", 1)]
        conflicts = query(db, "SELECT field, local_value, remote_value FROM replicad_conflicts")
        assert conflicts == [("first_name", "Local", "Remote")]
        emu.control.clear_faults()
        sync(cfg)
        assert emu.control.state()["records"]["contact"][str(rid)]["first_name"] == "Local"
        assert query(db, f"SELECT first_name, _pending FROM contact WHERE id = {rid}") == [
            ("Local", 0)
        ]
        assert_replica_matches(db, emu)


def test_refused_delete_keeps_the_row(tmp_path: Path) -> None:
    """A DELETE the destination cannot carry fails with a clear error; the row stays."""
    db = tmp_path / "replica.db"
    with emulator(records=50) as emu:
        cfg = write_config(tmp_path, emu.url, push=ENDGRATE)
        sync(cfg)
        before = query(db, "SELECT count(*) FROM contact")
        with pytest.raises(sqlite3.IntegrityError, match="is not carried upstream"):
            app_write(db, "DELETE FROM contact WHERE id IN (SELECT id FROM contact LIMIT 1)")
        assert query(db, "SELECT count(*) FROM contact") == before
        assert query(db, "SELECT count(*) FROM replicad_outbox") == [(0,)]


def test_rejection_is_kept_and_retry_requeues(tmp_path: Path) -> None:
    """A validation error keeps the edit and reason, later edits still go; retry requeues."""
    db = tmp_path / "replica.db"
    with emulator(records=50) as emu:
        cfg = write_config(tmp_path, emu.url, push=ENDGRATE)
        sync(cfg)
        app_write(
            db,
            "INSERT INTO contact (first_name, email, _internal_id) VALUES ('Bad', 'nope', 'bad')",
            "INSERT INTO contact (first_name, email, _internal_id) VALUES ('Ok', 'ok@x.org', 'ok')",
        )
        assert "1 local edit rejected" in sync(cfg, expect=5)  # done, but a rejection
        rows = dict(query(db, "SELECT internal_id, state FROM replicad_outbox"))
        assert rows == {"bad": "rejected", "ok": "confirmed"}
        (reason,) = query(db, "SELECT reason FROM replicad_outbox WHERE internal_id = 'bad'")[0]
        assert "@" in reason
        status = json.loads(replicad("status", "--json", "--config", str(cfg)).stdout)
        up = next(s for s in status["syncs"] if s["sync"] == "up")
        assert up["failed_local_edits"] == 1
        # Fixing the row requeues it; `retry` would too.
        app_write(db, "UPDATE contact SET email = 'fixed@x.org' WHERE _internal_id = 'bad'")
        sync(cfg)
        assert len(contacts_with(emu.control.state(), "email", "fixed@x.org")) == 1
        assert query(db, "SELECT _pending FROM contact WHERE _internal_id = 'bad'") == [(0,)]
        done = replicad("retry", "--all", "--config", str(cfg))
        assert done.returncode == 0 and "requeued 0" in done.stdout


def test_cdm_headers_and_sync_id_recorded(tmp_path: Path) -> None:
    """CDM writes carry X-Tracking-ID, X-Sync-Data and X-Sync-Sources; the X-Sync-ID is
    kept in replicad_outbox; a lost create is looked up, not posted twice."""
    db = tmp_path / "replica.db"
    push = {
        "source": "contact", "object": "contact", "push_to_source": True,
        "sources": ["quickbooks", "crm"], "natural_key": "email",
    }  # fmt: skip
    with emulator(records=50) as emu:
        cfg = write_config(tmp_path, emu.url, push=push, kind="cdm")
        sync(cfg)
        emu.control.faults({"endpoint": "cdm_write", "action": "lost_response", "times": 1})
        app_write(db, "INSERT INTO contact (first_name, email) VALUES ('Cy', 'cy@example.org')")
        sync(cfg)
        assert len(contacts_with(emu.control.state(), "email", "cy@example.org")) == 1
        writes = [p for p in emu.control.pushes() if p["endpoint"] == "cdm_write"]
        assert len(writes) == 1
        assert writes[0]["headers"]["x-sync-data"] == "push"
        assert writes[0]["headers"]["x-sync-sources"] == "quickbooks,crm"
        assert writes[0]["tracking_id"]
        ((_sync_id, tracking),) = query(db, "SELECT sync_id, tracking_id FROM replicad_outbox")
        assert tracking and writes[0]["tracking_id"].startswith(tracking)
        app_write(db, "UPDATE contact SET first_name = 'Cyd' WHERE email = 'cy@example.org'")
        sync(cfg)
        last = query(db, "SELECT sync_id FROM replicad_outbox ORDER BY entry DESC LIMIT 1")
        assert last[0][0] is not None
        assert_replica_matches(db, emu)


def test_token_never_in_replica_or_output(tmp_path: Path) -> None:
    """After pushes, the token appears in neither the replica file nor the CLI output."""
    db = tmp_path / "replica.db"
    with emulator(records=20) as emu:
        cfg = write_config(tmp_path, emu.url, push=ENDGRATE)
        sync(cfg)
        app_write(db, "INSERT INTO contact (first_name, email) VALUES ('T', 't@example.org')")
        err = sync(cfg)
        assert TOKEN not in err
        for f in tmp_path.iterdir():
            if f.is_file():
                assert TOKEN.encode() not in f.read_bytes(), f.name
        assert os.path.exists(db)


# Endgrate's upsert matches a contact by email, then phone, then full name: two local
# inserts sharing one of them become one record. (where, the two rows' columns, the
# field that tells them apart and each row's value of it)
MERGES = {
    "phone": ("phone = '+1 555 0101'", "email", {"p1": "p1@example.org", "p2": "p2@example.org"},
              {"p1": ("Pat", "One", "p1@example.org", "+1 555 0101"),
               "p2": ("Pat", "Two", "p2@example.org", "+1 555 0101")}),
    "email": ("email = 'pat@example.org'", "phone", {"p1": "+1 555 0111", "p2": "+1 555 0122"},
              {"p1": ("Pat", "One", "pat@example.org", "+1 555 0111"),
               "p2": ("Pam", "Two", "pat@example.org", "+1 555 0122")}),
    "name": ("first_name = 'Quinn' AND last_name = 'Same'", "customer_status",
             {"p1": "current", "p2": "none"},
             {"p1": ("Quinn", "Same", None, None), "p2": ("Quinn", "Same", None, None)}),
}  # fmt: skip


@pytest.mark.parametrize("shared", list(MERGES))
def test_local_inserts_the_destination_merges_lose_nothing(tmp_path: Path, shared: str) -> None:
    """Two local inserts that Endgrate's upsert matches to one record (same email,
    phone or full name) end as one row, and the other row's values are kept in
    replicad_conflicts."""
    where, field, told, rows_in = MERGES[shared]
    db = tmp_path / "replica.db"
    with emulator(records=50) as emu:
        cfg = write_config(tmp_path, emu.url, push=ENDGRATE)
        sync(cfg)
        for iid, (first, last, email, phone) in rows_in.items():
            db_ = sqlite3.connect(db, timeout=10)
            db_.execute(
                "INSERT INTO contact (first_name, last_name, email, phone, customer_status, "
                "_internal_id) VALUES (?, ?, ?, ?, ?, ?)",
                (first, last, email, phone, told[iid] if field == "customer_status" else None,
                 iid),
            )  # fmt: skip
            db_.commit()
            db_.close()
        sync(cfg)
        rows = query(db, f"SELECT id, _internal_id FROM contact WHERE {where}")
        assert len(rows) == 1 and rows[0][0] is not None
        (kept,) = [iid for _, iid in rows]
        gone = "p1" if kept == "p2" else "p2"
        journal = dict(
            query(
                db,
                "SELECT field, local_value FROM replicad_conflicts WHERE internal_id = ?",
                gone,
            )
        )
        assert journal["_internal_id"] == gone
        assert journal.get(field) == told[gone]
        assert_replica_matches(db, emu)


def test_a_server_echoing_credentials_never_gets_them_stored_or_shown(tmp_path: Path) -> None:
    """Every error body repeats the Authorization header (pull start, push transfer,
    a refused token): the token is in no file the daemon writes (replica, WAL,
    heartbeat), not in status or status --json, not on stderr or in the logs."""
    db = tmp_path / "replica.db"
    with emulator(records=20) as emu:
        cfg = write_config(tmp_path, emu.url, push=ENDGRATE)
        sync(cfg)
        app_write(db, "INSERT INTO contact (first_name, email) VALUES ('T', 't@example.org')")
        emu.control.faults(
            {"endpoint": "start", "action": "status", "status": 400, "echo_auth": True,
             "times": 0},
            {"endpoint": "transfer", "action": "status", "status": 422, "echo_auth": True,
             "times": 0},
        )  # fmt: skip
        outputs = [sync(cfg, expect=1)]
        reasons = query(db, "SELECT reason FROM replicad_outbox WHERE state = 'rejected'")
        assert reasons and all("Authorization: ***" in r for (r,) in reasons), reasons
        (error,) = query(db, "SELECT last_error FROM replicad_syncs WHERE sync = 'mirror'")[0]
        assert "Authorization: ***" in error
        daemon = start_replicad("run", "--config", str(cfg))
        heartbeat = tmp_path / "replica.db.daemon.json"
        try:
            wait_for(lambda: heartbeat.exists() and "***" in heartbeat.read_text(), timeout=30)
            for args in (("status",), ("status", "--json")):
                done = replicad(*args, "--config", str(cfg))
                outputs += [done.stdout, done.stderr]
        finally:
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=20)
        outputs.append(err)
        emu.control.clear_faults()
        emu.control.faults(
            {"endpoint": "any", "action": "status", "status": 401, "echo_auth": True},
        )
        outputs.append(replicad("sync", "--once", "--config", str(cfg)).stderr)
        for text in outputs:
            assert TOKEN not in text
            assert TOKEN[10:40] not in text
        for f in tmp_path.iterdir():
            if f.is_file():
                assert TOKEN.encode() not in f.read_bytes(), f.name
