"""Census-style push syncs end to end: a diffed source (another app's SQLite file or a
query on the replica), each of the five operations, mappings, runs and alerts,
validate --json, and kill -9 during a diffed push; against the real emulator and CLI."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    PROFILES,
    app_write,
    emulator,
    query,
    replicad,
    start_replicad,
    wait_for,
    write_config,
)


def app_file(path: Path, rows: list[tuple[int, str, str, str]], *, wal: bool = True) -> None:
    """Another app's database: customers(cust_id, mail, first, last)."""
    db = sqlite3.connect(path, isolation_level=None)
    if wal:
        db.execute("PRAGMA journal_mode = WAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS customers (cust_id INTEGER PRIMARY KEY, mail TEXT, "
        "first TEXT, last TEXT, updated_at TEXT)"
    )
    db.executemany(
        "INSERT INTO customers (cust_id, mail, first, last, updated_at) VALUES (?, ?, ?, ?, ?)",
        [(*r, f"2026-11-30T10:00:{r[0] % 60:02d}") for r in rows],
    )
    db.close()


def app_sql(path: Path, *statements: str) -> None:
    """Edit the other app's file."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for s in statements:
            db.execute(s)
    finally:
        db.close()


MAPPINGS = """mappings = [
  { from = { type = "column", data = "mail" }, to = "email", is_primary_identifier = true },
  { from = "first", to = "first_name" },
  { from = { type = "constant_value", data = "invoicing" }, to = "source_app" },
]"""


def census_config(
    folder: Path, url: str, body: str, *, kind: str = "cdm", pull: bool = False
) -> Path:
    """The minimal pull config plus a push connection and the sync ``body``."""
    cfg = write_config(folder, url)
    text = cfg.read_text()
    if not pull:
        text = text.replace('interval = "1s"', 'interval = "1s"\npaused = true')
    text += (
        f'[connections.out]\nkind = "{kind}"\nbase_url = "{url}"\ntoken_env = "CRM_TOKEN"\n'
        'max_retries = 4\nretry_backoff = "50ms"\nretry_backoff_max = "200ms"\n'
    )
    if kind == "endgrate":
        text += 'session_id = "e2e-session"\n'
    text += '[syncs.up]\ndirection = "push"\nconnection = "out"\n' + body + "\n"
    cfg.write_text(text)
    return cfg


def run_sync(cfg: Path, expect: int = 0) -> str:
    """`replicad sync --once`; returns stderr."""
    out = replicad("sync", "--once", "--no-progress", "--config", str(cfg))
    assert out.returncode == expect, out.stderr[-3000:]
    return out.stderr


def contacts_by_email(emu: Any) -> dict[str, list[dict[str, Any]]]:
    """The emulator's live contacts, grouped by email."""
    out: dict[str, list[dict[str, Any]]] = {}
    for data in emu.control.state()["records"]["contact"].values():
        if data is not None and data.get("email"):
            out.setdefault(data["email"], []).append(data)
    return out


def runs(db: Path) -> list[tuple[Any, ...]]:
    """(status, processed, created, updated, deleted, rejected, not_found) of the push's runs."""
    return query(
        db,
        "SELECT status, processed, created, updated, deleted, rejected, not_found "
        "FROM replicad_runs WHERE sync = 'up' ORDER BY run",
    )


ROWS = [(1, "ada@inv.example", "Ada", "L"), (2, "bob@inv.example", "Bob", "M"),
        (3, "cy@inv.example", "Cy", "N")]  # fmt: skip


@pytest.mark.parametrize("profile", PROFILES)
def test_diffed_upsert_with_mappings_sends_only_changes(tmp_path: Path, profile: str) -> None:
    """A diffed upsert from another app's file creates the mapped records with the
    constant, then sends only what changed; a vanished row is left alone."""
    app = tmp_path / "app.db"
    app_file(app, ROWS, wal=profile == "standard")  # rollback journal in the other run
    db = tmp_path / "replica.db"
    with emulator(records=20, profile=profile) as emu:
        body = (
            'source = { table = "customers", database = "app.db" }\nobject = "contact"\n'
            'operation = "upsert"\n' + MAPPINGS
        )
        cfg = census_config(tmp_path, emu.url, body)
        run_sync(cfg)
        got = contacts_by_email(emu)
        for _, mail, first, _last in ROWS:
            assert len(got[mail]) == 1
            assert got[mail][0]["first_name"] == first
            assert got[mail][0]["source_app"] == "invoicing"
            assert "last" not in got[mail][0]  # specific_properties: unmapped not sent
        app_sql(
            app,
            "UPDATE customers SET first = 'Adele' WHERE cust_id = 1",
            "DELETE FROM customers WHERE cust_id = 3",
            "INSERT INTO customers (cust_id, mail, first, last) VALUES (4, 'di@inv.example', "
            "'Di', 'O')",
        )
        before = len(emu.control.pushes())
        run_sync(cfg)
        got = contacts_by_email(emu)
        assert got["ada@inv.example"][0]["first_name"] == "Adele"
        assert len(got["di@inv.example"]) == 1
        assert len(got["cy@inv.example"]) == 1  # upsert never deletes
        writes = [p for p in emu.control.pushes()[before:] if p["endpoint"] == "cdm_write"]
        assert len(writes) == 2  # one update, one create: nothing for unchanged rows
        run_sync(cfg)
        assert runs(db) == [
            ("succeeded", 3, 3, 0, 0, 0, 0),
            ("succeeded", 2, 1, 1, 0, 0, 0),
            ("succeeded", 0, 0, 0, 0, 0, 0),
        ]


@pytest.mark.parametrize("profile", PROFILES)
def test_diffed_mirror_deletes_vanished_rows(tmp_path: Path, profile: str) -> None:
    """mirror: a row gone from the source query deletes its record at the destination,
    and the pull then removes it from the replica too."""
    app = tmp_path / "app.db"
    app_file(app, ROWS)
    db = tmp_path / "replica.db"
    with emulator(records=20, profile=profile) as emu:
        body = (
            "source = { query = \"SELECT mail, first FROM customers WHERE last <> 'X'\", "
            'database = "app.db" }\nobject = "contact"\noperation = "mirror"\n' + MAPPINGS
        )
        cfg = census_config(tmp_path, emu.url, body, pull=True)
        run_sync(cfg)
        assert set(contacts_by_email(emu)) >= {m for _, m, _, _ in ROWS}
        app_sql(app, "UPDATE customers SET last = 'X' WHERE cust_id = 2")
        run_sync(cfg)
        got = contacts_by_email(emu)
        assert "bob@inv.example" not in got
        assert "ada@inv.example" in got and "cy@inv.example" in got
        run_sync(cfg)
        assert query(db, "SELECT count(*) FROM contact WHERE email = 'bob@inv.example'") == [(0,)]
        assert runs(db)[1][4] == 1  # deleted


@pytest.mark.parametrize("profile", PROFILES)
def test_diffed_insert_creates_once_and_never_updates(tmp_path: Path, profile: str) -> None:
    """insert: new keys are created; a changed row is not sent; a key the destination
    already has is left as it is."""
    app = tmp_path / "app.db"
    app_file(app, ROWS)
    with emulator(records=20, profile=profile) as emu:
        existing = next(iter(emu.control.state()["records"]["contact"].values()))
        app_sql(
            app,
            "INSERT INTO customers (cust_id, mail, first) VALUES (9, "
            f"'{existing['email']}', 'Changed')",
        )
        body = (
            'source = { table = "customers", database = "app.db" }\nobject = "contact"\n'
            'operation = "insert"\n' + MAPPINGS
        )
        cfg = census_config(tmp_path, emu.url, body)
        run_sync(cfg)
        got = contacts_by_email(emu)
        assert all(len(got[m]) == 1 for _, m, _, _ in ROWS)
        assert got[existing["email"]] == [existing]  # found, not changed
        app_sql(app, "UPDATE customers SET first = 'Nope' WHERE cust_id = 1")
        run_sync(cfg)
        assert contacts_by_email(emu)["ada@inv.example"][0]["first_name"] == "Ada"


@pytest.mark.parametrize("profile", PROFILES)
def test_diffed_update_changes_known_records_and_reports_not_found(
    tmp_path: Path, profile: str
) -> None:
    """update: a row whose record the destination has (by primary identifier) updates
    it; a row it does not have ends not_found, and nothing is created."""
    app = tmp_path / "app.db"
    db = tmp_path / "replica.db"
    with emulator(records=20, profile=profile) as emu:
        existing = next(iter(emu.control.state()["records"]["contact"].values()))
        app_file(app, [(1, existing["email"], "Renamed", "L"), (2, "nobody@inv.example", "N", "")])
        body = (
            'source = { table = "customers", database = "app.db" }\nobject = "contact"\n'
            'operation = "update"\n' + MAPPINGS
        )
        cfg = census_config(tmp_path, emu.url, body)
        run_sync(cfg)
        got = contacts_by_email(emu)
        assert got[existing["email"]][0]["first_name"] == "Renamed"
        assert "nobody@inv.example" not in got
        assert query(
            db, "SELECT op, state FROM replicad_outbox WHERE sync = 'up' ORDER BY entry"
        ) == [
            ("update", "confirmed"),
            ("update", "not_found"),
        ]
        assert runs(db)[-1][6] == 1


@pytest.mark.parametrize("profile", PROFILES)
def test_diffed_append_with_high_water_mark(tmp_path: Path, profile: str) -> None:
    """append with a high-water mark: only rows at or past the mark are read, a row tied
    at the mark is sent once, and a row moved past the mark is appended again."""
    app = tmp_path / "app.db"
    app_file(app, [])
    app_sql(
        app,
        "INSERT INTO customers VALUES (1, 'a1@inv.example', 'A', '', '2026-01-01')",
        "INSERT INTO customers VALUES (2, 'a2@inv.example', 'B', '', '2026-01-02')",
    )
    db = tmp_path / "replica.db"
    with emulator(records=5, profile=profile) as emu:
        body = (
            'source = { table = "customers", database = "app.db" }\nobject = "contact"\n'
            'operation = "append"\nhigh_water_mark_attributes = { column = "updated_at" }\n'
            + MAPPINGS
        )
        cfg = census_config(tmp_path, emu.url, body)
        run_sync(cfg)
        # A tie at the mark and a row past it; one before the mark is never read.
        app_sql(
            app,
            "INSERT INTO customers VALUES (3, 'a3@inv.example', 'C', '', '2026-01-02')",
            "INSERT INTO customers VALUES (4, 'a4@inv.example', 'D', '', '2026-01-03')",
            "INSERT INTO customers VALUES (5, 'old@inv.example', 'E', '', '2025-12-31')",
        )
        run_sync(cfg)
        run_sync(cfg)
        got = contacts_by_email(emu)
        assert {m: len(v) for m, v in got.items() if m.endswith("@inv.example")} == {
            "a1@inv.example": 1, "a2@inv.example": 1, "a3@inv.example": 1,
            "a4@inv.example": 1,
        }  # fmt: skip
        app_sql(
            app, "UPDATE customers SET first = 'A2', updated_at = '2026-02-01' WHERE cust_id = 1"
        )
        run_sync(cfg)
        assert len(contacts_by_email(emu)["a1@inv.example"]) == 2  # appended, not updated
        assert [r[2] for r in runs(db)] == [2, 2, 0, 1]


def test_diffed_query_on_the_replica_through_endgrate(tmp_path: Path) -> None:
    """A query on the replica itself, pushed with sync_all_properties and camel_case
    names through an Endgrate upsert."""
    db = tmp_path / "replica.db"
    with emulator(records=30) as emu:
        body = (
            "source = { query = \"SELECT 'vip-' || id || '@x.example' AS "
            '\\"e-mail\\", first_name AS '
            '\\"First Name\\" FROM contact WHERE id <= 3" }\n'
            'object = "crm-contact"\noperation = "upsert"\n'
            'mappings = [{ from = "e-mail", to = "email", is_primary_identifier = true }]\n'
            'field_behavior = "sync_all_properties"\nfield_normalization = "snake_case"'
        )
        cfg = census_config(tmp_path, emu.url, body, kind="endgrate", pull=True)
        # Push first: on a new replica the query's table does not exist yet (the pull
        # then makes it), so the first push run fails, clearly.
        assert "no such table: contact" in run_sync(cfg, expect=1)
        run_sync(cfg)
        got = contacts_by_email(emu)
        for i in (1, 2, 3):
            first = query(db, "SELECT first_name FROM contact WHERE id = ?", i)[0][0]
            assert [c.get("first_name") for c in got[f"vip-{i}@x.example"]] == [first]


def test_kill_9_during_a_diffed_push_converges(tmp_path: Path) -> None:
    """kill -9 at random moments of a 300-row diffed push: every row exists once at the
    destination, and a final run sends nothing more."""
    rng = random.Random(11)
    app = tmp_path / "app.db"
    app_file(app, [(i, f"k{i}@inv.example", f"K{i}", "") for i in range(1, 301)])
    db = tmp_path / "replica.db"
    with emulator(records=5) as emu:
        body = (
            'source = { table = "customers", database = "app.db" }\nobject = "contact"\n'
            'operation = "upsert"\n' + MAPPINGS
        )
        cfg = census_config(tmp_path, emu.url, body)
        # Slow writes down (four are out at once) so that kills land mid-push.
        emu.control.faults(
            {"endpoint": "cdm_write", "action": "delay", "seconds": 0.05, "times": 0}
        )
        kills = 0
        for n in range(5):
            proc = start_replicad("sync", "--once", "--no-progress", "--config", str(cfg))
            time.sleep(rng.uniform(0.8, 1.6))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            if n == 2:  # a change while some of it is in flight
                app_sql(app, "UPDATE customers SET first = 'Changed' WHERE cust_id = 300")
        assert kills >= 3, "the push finished before it could be killed"
        emu.control.clear_faults()
        run_sync(cfg)
        got = contacts_by_email(emu)
        for i in range(1, 301):
            assert len(got[f"k{i}@inv.example"]) == 1, i
        assert got["k300@inv.example"][0]["first_name"] == "Changed"
        run_sync(cfg)
        assert runs(db)[-1][:2] == ("succeeded", 0)
        assert query(db, "SELECT count(*) FROM replicad_outbox WHERE state <> 'confirmed'") == [
            (0,)
        ]


def test_captured_tables_follow_their_operation(tmp_path: Path) -> None:
    """A captured insert table refuses UPDATE of a sent row, an update table refuses
    INSERT, and a mirror table's DELETE deletes the record upstream."""
    db = tmp_path / "replica.db"
    with emulator(records=20) as emu:
        cfg = census_config(
            tmp_path,
            emu.url,
            'source = "contact"\nobject = "contact"\noperation = "update"',
            pull=True,
        )
        run_sync(cfg)
        with pytest.raises(sqlite3.IntegrityError, match="operation 'update'"):
            app_write(db, "INSERT INTO contact (first_name) VALUES ('x')")
        cfg.write_text(cfg.read_text().replace('operation = "update"', 'operation = "insert"'))
        run_sync(cfg)
        with pytest.raises(sqlite3.IntegrityError, match="operation 'insert' or 'append'"):
            app_write(db, "UPDATE contact SET first_name = 'y' WHERE id = 1")
        cfg.write_text(cfg.read_text().replace('operation = "insert"', 'operation = "mirror"'))
        run_sync(cfg)
        app_write(db, "DELETE FROM contact WHERE id = 2")
        run_sync(cfg)
        assert emu.control.state()["records"]["contact"].get("2") is None
        run_sync(cfg)
        assert query(db, "SELECT count(*) FROM contact WHERE id = 2") == [(0,)]
        assert query(db, "SELECT op, state FROM replicad_outbox") == [("delete", "confirmed")]


def test_a_failing_source_fails_the_run_raises_an_alert_and_runs_on_alert(
    tmp_path: Path,
) -> None:
    """The other app renames a mapped column (a config error naming the mapping), then
    its table: the run fails with a clear error, nothing is sent, a failed_run alert
    opens (on_alert gets it as JSON) and resolves once fixed."""
    app = tmp_path / "app.db"
    app_file(app, ROWS)
    db = tmp_path / "replica.db"
    seen = tmp_path / "alerts.jsonl"
    hook = tmp_path / "hook.py"
    hook.write_text(f"import sys\nopen({str(seen)!r}, 'a').write(sys.stdin.read() + '\\n')\n")
    with emulator(records=5) as emu:
        body = (
            'source = { table = "customers", database = "app.db" }\nobject = "contact"\n'
            + MAPPINGS
            + '\nalert_attributes = [{ type = "failed_run" }]\n'
            + f'on_alert = ["{Path(__import__("sys").executable)}", "{hook}"]'
        )
        cfg = census_config(tmp_path, emu.url, body)
        run_sync(cfg)
        app_sql(app, "ALTER TABLE customers RENAME COLUMN first TO given")
        # A column the mappings name is gone: the definition no longer fits.
        err = run_sync(cfg, expect=2)
        assert "syncs.up.mappings[1].from: source has no column 'first'" in err
        app_sql(app, "ALTER TABLE customers RENAME COLUMN given TO first")
        app_sql(app, "ALTER TABLE customers RENAME TO clients")
        before = len(emu.control.pushes())
        err = run_sync(cfg, expect=1)
        assert "source query failed: no such table: customers" in err
        assert len(emu.control.pushes()) == before
        assert query(db, "SELECT type, open FROM replicad_alerts") == [("failed_run", 1)]
        assert runs(db)[-1][0] == "failed"
        status = replicad("status", "--config", str(cfg))
        assert "failed_run" in status.stdout and status.returncode == 1
        app_sql(app, "ALTER TABLE clients RENAME TO customers")
        run_sync(cfg)
        assert query(db, "SELECT type, open FROM replicad_alerts") == [("failed_run", 0)]
        assert replicad("status", "--config", str(cfg)).returncode == 0
        # An open alert alone (opened again by hand here) also makes status exit 1.
        app_sql(db, "UPDATE _replicad_alerts SET resolved_at = NULL")
        assert replicad("status", "--config", str(cfg)).returncode == 1
        told = [json.loads(line) for line in seen.read_text().splitlines()]
        assert [(a["state"], a["type"]) for a in told] == [
            ("raised", "failed_run"),
            ("resolved", "failed_run"),
        ]


def test_validate_json_checks_sources(tmp_path: Path) -> None:
    """validate --json answers in Census's shape; a duplicate identifier and a missing
    mapped column are reported per sync, exit 2."""
    app = tmp_path / "app.db"
    app_file(app, ROWS)
    with emulator(records=5) as emu:
        body = 'source = { table = "customers", database = "app.db" }\nobject = "contact"\n'
        cfg = census_config(tmp_path, emu.url, body + MAPPINGS)
        out = replicad("validate", "--json", "--config", str(cfg))
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        assert answer["status"] == "success"
        assert answer["data"]["syncs"]["up"]["status"] == "success"
        app_sql(
            app, "INSERT INTO customers (cust_id, mail, first) VALUES (7, 'ada@inv.example', 'A')"
        )
        out = replicad("validate", "--json", "--config", str(cfg))
        assert out.returncode == 2
        answer = json.loads(out.stdout)
        assert answer["status"] == "error"
        assert "ada@inv.example" in answer["data"]["syncs"]["up"]["error"]


def test_the_daemon_is_woken_by_the_source_files_changes(tmp_path: Path) -> None:
    """`replicad run` diffs another app's file when it changes, not only every
    interval (here an hour): an edit there reaches the destination within seconds."""
    app = tmp_path / "app.db"
    app_file(app, ROWS)
    with emulator(records=5) as emu:
        body = (
            'source = { table = "customers", database = "app.db" }\nobject = "contact"\n'
            'interval = "1h"\n' + MAPPINGS
        )
        cfg = census_config(tmp_path, emu.url, body)
        proc = start_replicad("run", "--config", str(cfg))
        try:
            wait_for(lambda: "cy@inv.example" in contacts_by_email(emu))
            app_sql(app, "UPDATE customers SET first = 'Woken' WHERE cust_id = 3")
            wait_for(
                lambda: contacts_by_email(emu)["cy@inv.example"][0]["first_name"] == "Woken",
                timeout=15,
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
