"""Census-style pulls end to end: append keeps a change history, insert and update,
and types; against the real emulator and CLI, compared field by field."""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    app_write,
    emulator,
    expected_state,
    query,
    replica_state,
    replicad,
    start_replicad,
    stored_rows,
    write_config,
)


def pull_config(folder: Path, url: str, extra: str) -> Path:
    """The minimal pull config with ``extra`` keys for its sync."""
    cfg = write_config(folder, url)
    cfg.write_text(cfg.read_text() + extra + "\n")
    return cfg


def sync(cfg: Path) -> None:
    done = replicad("sync", "--once", "--no-progress", "--config", str(cfg))
    assert done.returncode == 0, done.stderr[-2000:]


def history(db: Path, type_: str) -> list[dict[str, Any]]:
    """Every row of a history table, in _seq order, as dicts."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(f"SELECT * FROM {type_}_history ORDER BY _seq")]
    finally:
        con.close()


def latest(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The last history row of each record."""
    out: dict[int, dict[str, Any]] = {}
    for r in rows:
        out[r["id"]] = r
    return out


def test_append_keeps_every_change_and_never_updates_in_place(tmp_path: Path) -> None:
    """append: every item (deletes too) is a history row; the latest row of each record
    equals the remote record; a redelivery adds nothing; apps cannot edit the history."""
    db = tmp_path / "replica.db"
    with emulator(records=300) as emu:
        cfg = pull_config(tmp_path, emu.url, 'operation = "append"')
        sync(cfg)
        emu.control.mutate(random=80, seed=5)
        sync(cfg)
        sync(cfg)
        tables = {t for (t,) in query(db, "SELECT name FROM replicad_tables")}
        assert tables == {"contact_history", "lead_history", "deal_history"}
        remote = expected_state(emu.control.state())
        for type_, records in remote.items():
            rows = history(db, type_)
            assert [r["_seq"] for r in rows] == list(
                range(rows[0]["_seq"], rows[0]["_seq"] + len(rows))
            )
            assert len({(r["id"], r["_event_type"], r["_revision"]) for r in rows}) == len(rows)
            last = latest(rows)
            for rid, data in records.items():
                if data is None:
                    continue
                row = last[rid]
                assert row["_event_type"] == "updated"
                assert {k: row[k] for k in data} == data, (type_, rid)
            gone = {int(i) for i, d in emu.control.state()["records"][type_].items() if d is None}
            for rid in gone & set(last):
                assert last[rid]["_event_type"] == "deleted"
        with pytest.raises(sqlite3.IntegrityError, match="is a change history"):
            app_write(db, "DELETE FROM contact_history")


def test_insert_keeps_first_seen_and_update_changes_only_knownstored_rows(tmp_path: Path) -> None:
    """insert never changes a row once there (new records still arrive); update then
    changes only the rows already there, skipping new records and remote deletes."""
    db = tmp_path / "replica.db"
    with emulator(records=100) as emu:
        cfg = pull_config(tmp_path, emu.url, 'operation = "insert"')
        sync(cfg)
        first = replica_state(db)["contact"]
        some = sorted(first)[:3]
        emu.control.mutate(
            [{"op": "update", "type": "contact", "id": some[0], "data": {"name": "Changed"}},
             {"op": "create", "type": "contact", "data": {"name": "Newcomer"}},
             {"op": "delete", "type": "contact", "id": some[1]}],
        )  # fmt: skip
        sync(cfg)
        now = replica_state(db)["contact"]
        assert now[some[0]] == first[some[0]]  # not changed
        assert some[1] in now  # deletes are not applied
        assert any(r.get("name") == "Newcomer" for r in now.values())
        cfg.write_text(cfg.read_text().replace('operation = "insert"', 'operation = "update"'))
        emu.control.mutate(
            [{"op": "update", "type": "contact", "id": some[2], "data": {"name": "Refreshed"}},
             {"op": "create", "type": "contact", "data": {"name": "Skipped"}}],
        )  # fmt: skip
        sync(cfg)
        now = replica_state(db)["contact"]
        assert now[some[2]]["name"] == "Refreshed"
        assert not any(r.get("name") == "Skipped" for r in now.values())


def test_types_keep_only_those_and_count_the_rest_skipped(tmp_path: Path) -> None:
    """types = ["deal"]: only the deal table; the other items are acknowledged and
    counted as skipped in replicad_runs; the deals match the remote field by field."""
    db = tmp_path / "replica.db"
    with emulator(records=200) as emu:
        cfg = pull_config(tmp_path, emu.url, 'types = ["deal"]')
        sync(cfg)
        assert {t for (t,) in query(db, "SELECT name FROM replicad_tables")} == {"deal"}
        remote = expected_state(emu.control.state())
        assert replica_state(db)["deal"] == remote["deal"]
        skipped = query(db, "SELECT skipped FROM replicad_runs WHERE sync = 'mirror'")[0][0]
        assert skipped == len(remote["contact"]) + len(remote["lead"])
        sync(cfg)  # acknowledged: not delivered again
        assert query(db, "SELECT skipped FROM replicad_runs ORDER BY run DESC LIMIT 1") == [(0,)]


def test_kill_9_during_an_append_pull_leaves_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    """kill -9 at random moments of an append pull, then resume: one history row per
    item delivered (no duplicate for a revision), _seq without gaps."""
    rng = random.Random(3)
    db = tmp_path / "replica.db"
    with emulator(records=12000) as emu:
        cfg = pull_config(tmp_path, emu.url, 'operation = "append"')
        kills = 0
        for round_ in range(4):
            proc = start_replicad("sync", "--once", "--no-progress", "--config", str(cfg))
            # Kill once this run has visibly progressed, at a random row count.
            target = stored_rows(db) + rng.randint(200, 3000)
            deadline = time.monotonic() + 30
            while proc.poll() is None and stored_rows(db) < target and time.monotonic() < deadline:
                time.sleep(rng.uniform(0.0, 0.05))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            emu.control.mutate(random=30, seed=round_ + 10)
        assert kills >= 2, "the pull finished before it could be killed"
        sync(cfg)
        remote = expected_state(emu.control.state())
        for type_, records in remote.items():
            rows = history(db, type_)
            seqs = [r["_seq"] for r in rows]
            assert seqs == sorted(seqs)
            assert len({(r["id"], r["_event_type"], r["_revision"]) for r in rows}) == len(rows)
            last = latest(rows)
            for rid, data in records.items():
                if data is not None:
                    assert {k: last[rid][k] for k in data} == data
        every = query(
            db,
            "SELECT sum(n), sum(m) FROM (SELECT count(*) AS n, max(_seq) - min(_seq) + 1 AS m "
            "FROM contact_history UNION ALL SELECT count(*), max(_seq) - min(_seq) + 1 "
            "FROM deal_history UNION ALL SELECT count(*), max(_seq) - min(_seq) + 1 FROM "
            "lead_history)",
        )
        assert every[0][0] == every[0][1]  # no gap in any table's _seq


def columns(db: Path, table: str) -> list[str]:
    """A table's data columns (without replicad's own)."""
    own = {"id", "_internal_id", "_revision", "_synced_at", "_pending"}
    return [r[1] for r in query(db, f"PRAGMA table_info({table})") if r[1] not in own]


def test_pull_mappings_store_only_mapped_fields_and_push_back_by_field(tmp_path: Path) -> None:
    """specific_properties with per-type mappings: only the mapped fields, in their
    columns; a mapped field never received has its column, NULL, and validate names
    it (no error); an edit of a
    mapped column goes back under the remote field's name; a mapping that moves a
    stored column waits for `replicad resync`, which applies it."""
    db = tmp_path / "replica.db"
    with emulator(records=60) as emu:
        cfg = pull_config(
            tmp_path,
            emu.url,
            'types = ["contact"]\nfield_behavior = "specific_properties"\n'
            "[syncs.mirror.mappings]\n"
            'contact = [{ from = "first_name", to = "given" }, { from = "email", to = "mail" }]\n'
            '[connections.out]\nkind = "cdm"\nbase_url = "' + emu.url + '"\n'
            'token_env = "CRM_TOKEN"\n[syncs.up]\ndirection = "push"\nconnection = "out"\n'
            'source = "contact"\nobject = "contact"',
        )
        sync(cfg)
        assert columns(db, "contact") == ["given", "mail"]
        cfg.write_text(cfg.read_text().replace(
            '{ from = "email", to = "mail" }]',
            '{ from = "email", to = "mail" }, { from = "nickname", to = "nick" }]',
        ))  # fmt: skip
        said = replicad("validate", "--config", str(cfg))
        assert said.returncode == 0, said.stderr
        assert "mapped field(s) with no value received yet: contact.nickname" in said.stdout
        remote = expected_state(emu.control.state())["contact"]
        stored = {r[0]: (r[1], r[2]) for r in query(db, "SELECT id, given, mail FROM contact")}
        assert stored == {i: (d.get("first_name"), d.get("email")) for i, d in remote.items()}
        some = min(stored)
        app_write(db, f"UPDATE contact SET given = 'Zed' WHERE id = {some}")
        sync(cfg)
        assert columns(db, "contact") == ["given", "mail", "nick"]  # NULL until it arrives
        assert query(db, "SELECT count(*) FROM contact WHERE nick IS NOT NULL") == [(0,)]
        assert emu.control.state()["records"]["contact"][str(some)]["first_name"] == "Zed"
        cfg.write_text(cfg.read_text().replace('to = "given"', 'to = "first"'))
        refused = replicad("sync", "--once", "--no-progress", "--config", str(cfg))
        assert refused.returncode == 2
        assert "would move to 'first'" in refused.stderr
        assert "replicad resync mirror" in refused.stderr
        assert replicad("resync", "mirror", "--config", str(cfg)).returncode == 0
        sync(cfg)
        assert columns(db, "contact") == ["first", "mail", "nick"]
        assert query(db, f"SELECT first FROM contact WHERE id = {some}") == [("Zed",)]


def test_field_normalization_names_automatic_columns(tmp_path: Path) -> None:
    """sync_all_properties with camel_case: every field stored, under camelCase names;
    a change of style renames them after `replicad resync`, not an app's own names."""
    db = tmp_path / "replica.db"
    with emulator(records=40) as emu:
        cfg = pull_config(tmp_path, emu.url, 'types = ["deal"]\nfield_normalization = "camel_case"')
        sync(cfg)
        cols = columns(db, "deal")
        assert "stageId" in cols and "estimatedCloseDate" in cols and "stage_id" not in cols
        remote = expected_state(emu.control.state())["deal"]
        some = min(remote)
        got = query(db, f"SELECT stageId, name FROM deal WHERE id = {some}")
        assert got == [(remote[some]["stage_id"], remote[some]["name"])]
        # A new style renames the automatic columns, once the operator asks for it; a
        # column an app renamed itself keeps the app's name.
        app_write(db, 'ALTER TABLE deal RENAME COLUMN "estimatedCloseDate" TO closes_on')
        sync(cfg)
        cfg.write_text(cfg.read_text().replace('"camel_case"', '"snake_case"'))
        refused = replicad("sync", "--once", "--no-progress", "--config", str(cfg))
        assert refused.returncode == 2
        assert "syncs.mirror.field_normalization: deal.stageId" in refused.stderr
        assert "replicad resync mirror" in refused.stderr
        assert replicad("resync", "mirror", "--config", str(cfg)).returncode == 0
        sync(cfg)
        cols = columns(db, "deal")
        assert "stage_id" in cols and "closes_on" in cols and "stageId" not in cols
        remote = expected_state(emu.control.state())["deal"]
        got = query(db, f"SELECT stage_id, closes_on FROM deal WHERE id = {some}")
        assert got == [(remote[some]["stage_id"], remote[some]["estimated_close_date"])]


def test_a_first_field_normalization_renames_the_default_names_after_resync(
    tmp_path: Path,
) -> None:
    """A sync that ran with the default names, then given `snake_case`: refused until
    `replicad resync`, then the columns named as the fields were take the new style."""
    db = tmp_path / "replica.db"
    with emulator(records=40) as emu:
        cfg = pull_config(tmp_path, emu.url, 'types = ["deal"]')
        sync(cfg)
        db_ = sqlite3.connect(db)
        db_.execute('ALTER TABLE deal RENAME COLUMN "stage_id" TO "StageID"')  # an app's
        db_.close()
        sync(cfg)
        cfg.write_text(
            cfg.read_text().replace(
                'types = ["deal"]', 'types = ["deal"]\nfield_normalization = "camel_case"'
            )
        )
        refused = replicad("sync", "--once", "--no-progress", "--config", str(cfg))
        assert refused.returncode == 2, refused.stderr
        assert "syncs.mirror.field_normalization: deal.contact_id" in refused.stderr
        assert replicad("resync", "mirror", "--config", str(cfg)).returncode == 0
        sync(cfg)
        cols = columns(db, "deal")
        assert "estimatedCloseDate" in cols and "StageID" in cols
