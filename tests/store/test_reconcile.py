"""Apps cannot corrupt the bookkeeping: guarded columns, restored triggers, renamed columns."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from replicad.store import PushSource, Replica
from tests.store.conftest import TARGET, gone, page, rows, up


def app(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=5, isolation_level=None)


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE contact SET _revision = 999999999 WHERE id = 1",
        "UPDATE contact SET _synced_at = 'x' WHERE id = 1",
        "UPDATE contact SET _pending = 2 WHERE id = 1",
        "INSERT INTO contact (name, _revision) VALUES ('n', 5)",
        "INSERT INTO contact (name, _pending) VALUES ('n', 0)",
    ],
)
async def test_bookkeeping_columns_are_refused_to_apps(replica: Replica, sql: str) -> None:
    """Apps may not set _revision, _synced_at or _pending (a later pull would be
    ignored, or an edit shown as sent): a clear SQL error, nothing changes."""
    await replica.apply_page(TARGET, page(up("contact", 1, 3, name="a")))
    await replica.register_push([PushSource("out", "contact")])
    db = app(replica.path)
    with pytest.raises(sqlite3.IntegrityError, match=r"managed by replicad|may not set"):
        db.execute(sql)
    db.close()
    await replica.apply_page(TARGET, page(up("contact", 1, 4, name="b")))
    assert (await rows(replica, "contact"))[1]["name"] == "b"


async def test_a_dropped_trigger_is_restored_at_open(tmp_path: Path) -> None:
    """A capture trigger an app dropped is recreated when the replica opens (and said)."""
    path = tmp_path / "r.db"
    replica = await Replica.open(path)
    await replica.register_sync("mirror", "pull", "crm")
    await replica.apply_page(TARGET, page(up("contact", 1, 3, name="a")))
    await replica.register_push([PushSource("out", "contact")])
    await replica.close()
    db = app(path)
    db.execute('DROP TRIGGER "_replicad_capture_update_contact"')
    db.close()
    replica = await Replica.open(path)
    assert replica.repairs == ["trigger _replicad_capture_update_contact was missing: restored"]
    await replica.close()
    db = app(path)
    db.execute("UPDATE contact SET name = 'edited' WHERE id = 1")
    assert db.execute("SELECT op, state FROM replicad_outbox").fetchall() == [("update", "pending")]
    db.close()


async def test_a_dropped_or_altered_status_view_is_restored_at_open(tmp_path: Path) -> None:
    """`replicad_outbox` dropped and `replicad_syncs` replaced by an app are made
    again when the replica opens (and said)."""
    path = tmp_path / "r.db"
    await (await Replica.open(path)).close()
    db = app(path)
    db.execute("DROP VIEW replicad_outbox")
    db.execute("DROP VIEW replicad_syncs")
    db.execute("CREATE VIEW replicad_syncs AS SELECT 1 AS x")
    db.close()
    replica = await Replica.open(path)
    assert sorted(replica.repairs) == [
        "view replicad_outbox restored",
        "view replicad_syncs rebuilt",
    ]
    await replica.close()
    db = app(path)
    assert db.execute("SELECT count(*) FROM replicad_outbox").fetchone() == (0,)
    assert "sync" in [d[0] for d in db.execute("SELECT * FROM replicad_syncs").description]
    db.close()


async def test_a_column_renamed_by_an_app_is_followed(replica: Replica) -> None:
    """An app's RENAME COLUMN while the daemon runs: the next page is applied (the field
    follows the new name, the data stays); nothing is stuck."""
    await replica.apply_page(TARGET, page(up("contact", 1, 3, name="a", city="X")))
    db = app(replica.path)
    db.execute("ALTER TABLE contact RENAME COLUMN city TO town")
    db.close()
    result = await replica.apply_page(TARGET, page(up("contact", 2, 1, name="b", city="Y")))
    assert result.inserted == 1
    got = await rows(replica, "contact")
    assert got[1]["town"] == "X" and got[2]["town"] == "Y"
    assert (
        replica.repairs[0] == "contact.city was renamed to town by an app: field 'city' follows it"
    )
    # SQLite rewrote the capture trigger for the new name; it is regenerated as well.
    assert all(r.startswith("trigger ") for r in replica.repairs[1:])


async def test_an_own_column_renamed_and_a_dropped_table_are_repaired(
    replica: Replica,
) -> None:
    """An app renames `id`, or drops the whole table: the next page is applied after
    a repair (named back; made again, with a full pull asked for), never failed on
    every attempt. (Dropping one of replicad's own columns is refused by SQLite while
    the triggers name it.)"""
    await replica.apply_page(TARGET, page(up("contact", 1, 1, name="a")))
    db = app(replica.path)
    db.execute("ALTER TABLE contact RENAME COLUMN id TO remote_id")
    db.close()
    await replica.apply_page(TARGET, page(up("contact", 2, 1, name="b")))
    # (SQLite rewrote the triggers with each rename: they are made again too.)
    assert replica.repairs[0] == "contact.id was renamed to remote_id by an app: named back"
    assert sorted(await rows(replica, "contact")) == [1, 2]
    db = app(replica.path)
    db.execute("DROP TABLE contact")
    db.close()
    await replica.apply_page(TARGET, page(up("contact", 3, 1, name="c")))
    assert replica.repairs[-1].startswith("table contact was dropped by an app: made again")
    assert list(await rows(replica, "contact")) == [3]
    assert await replica.resync_since("crm") is not None  # the full pull refills it


async def test_a_delete_before_the_create_leaves_a_tombstone(replica: Replica) -> None:
    """A delete of a record never seen is remembered: its older create, delivered late,
    does not bring it back."""
    await replica.apply_page(TARGET, page(gone("contact", 9)))
    await replica.apply_page(TARGET, page(up("contact", 9, 5, name="zombie")))
    assert await rows(replica, "contact") == {}


async def test_a_full_pull_removes_only_rows_it_knows_are_gone(replica: Replica) -> None:
    """After a full pull, rows it did not bring are removed, except a record it had to
    quarantine (it exists remotely); an unidentifiable quarantined item, or a sync
    that keeps remote deletes, removes nothing."""
    from dataclasses import replace

    from replicad.store import BadItem, PageBatch
    from replicad.store.operate import resync_at

    await replica.apply_page(
        TARGET, page(*(up("contact", i, 1, name=f"n{i}") for i in range(1, 5)))
    )

    async def full_pull(*bad: BadItem, apply_deletes: bool = True) -> int | None:
        resync_at(replica.path, ["crm"])
        request = await replica.resync_request("crm")
        assert request is not None
        target = replace(TARGET, resync=request, apply_deletes=apply_deletes)
        batch = PageBatch([up("contact", 1, 2, name="n1")], list(bad))
        await replica.apply_page(target, batch)
        return await replica.finish_resync(target)

    # Record 3 could not be stored (but exists remotely): kept. 2 and 4 are gone.
    assert await full_pull(BadItem("{}", "NaN", "k3", "contact", 3)) == 2
    assert sorted(await rows(replica, "contact")) == [1, 3]
    assert await replica.resync_since("crm") is None
    # An item whose record is unknown: nothing may be removed.
    assert await full_pull(BadItem("{", "not JSON", None)) is None
    assert sorted(await rows(replica, "contact")) == [1, 3]
    # A sync that keeps remote deletes (upsert) removes nothing either.
    assert await full_pull(apply_deletes=False) is None
    assert sorted(await rows(replica, "contact")) == [1, 3]


async def test_a_resync_asked_during_a_full_pull_starts_over_and_removes_nothing_early(
    replica: Replica,
) -> None:
    """A second `resync` while a full pull drains: that pull's end removes nothing (the
    rows its first pages brought stay), and the new request's own full pull then
    removes what the remote no longer has."""
    from dataclasses import replace

    from replicad.store.operate import resync_at

    await replica.apply_page(
        TARGET, page(*(up("contact", i, 1, name=f"n{i}") for i in range(1, 6)))
    )
    resync_at(replica.path, ["crm"])
    first = replace(TARGET, resync=await replica.resync_request("crm"))
    await replica.apply_page(first, page(up("contact", 1, 1, name="n1"), up("contact", 2, 1)))
    resync_at(replica.path, ["crm"])  # again, mid-pull
    second = await replica.resync_request("crm")
    assert second is not None and second != first.resync
    await replica.apply_page(first, page(up("contact", 3, 1, name="n3"), up("contact", 4, 1)))
    assert await replica.finish_resync(first) is None
    assert sorted(await rows(replica, "contact")) == [1, 2, 3, 4, 5]
    assert await replica.resync_request("crm") == second  # still to do
    # The new device's full pull: record 5 is gone remotely.
    again = replace(TARGET, resync=second)
    await replica.apply_page(again, page(*(up("contact", i, 1) for i in range(1, 5))))
    assert await replica.finish_resync(again) == 1
    assert sorted(await rows(replica, "contact")) == [1, 2, 3, 4]
    assert await replica.resync_since("crm") is None
