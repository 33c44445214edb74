"""Applying pages: values, revision guards, tombstones, schema evolution, quarantine."""

from __future__ import annotations

import sqlite3

import pytest

from replicad.store import BadItem, FailedObject, PageBatch, Replica
from tests.store.conftest import TARGET, gone, page, rows, up


async def test_values_round_trip(replica: Replica) -> None:
    """Scalars stay as they came, booleans become 0/1, objects and arrays JSON text."""
    item = up(
        "contact", 1, 10, name="Ada", zip="007", score=1.5, vip=True, gone=None,
        address={"city": "Zürich", "lines": [1, 2]}, tags=["a", "b"], big=2**70,
    )  # fmt: skip
    await replica.apply_page(TARGET, page(item))
    row = (await rows(replica, "contact"))[1]
    assert row["zip"] == "007" and row["score"] == 1.5 and row["vip"] == 1
    assert row["gone"] is None and row["name"] == "Ada"
    assert row["address"] == '{"city":"Zürich","lines":[1,2]}'
    assert row["tags"] == '["a","b"]'
    assert row["big"] == str(2**70)
    assert row["_revision"] == 10 and row["_pending"] == 0
    types = await replica.db.execute_fetchall("SELECT typeof(zip), typeof(vip) FROM contact")
    assert list(types) == [("text", "integer")]


async def test_revision_guard_and_idempotence(replica: Replica) -> None:
    """A duplicate or an older revision after a newer one changes nothing."""
    await replica.apply_page(TARGET, page(up("contact", 1, 5, name="new")))
    result = await replica.apply_page(TARGET, page(up("contact", 1, 3, name="old")))
    await replica.apply_page(TARGET, page(up("contact", 1, 5, name="new")))
    assert result.stale == 1
    assert (await rows(replica, "contact"))[1]["name"] == "new"


async def test_delete_keeps_tombstone_and_blocks_stale_update(replica: Replica) -> None:
    """A stale update after a delete does not resurrect; a newer revision does."""
    await replica.apply_page(TARGET, page(up("deal", 7, 4, name="x")))
    await replica.apply_page(TARGET, page(gone("deal", 7)))
    assert await rows(replica, "deal") == {}
    tomb = await replica.db.execute_fetchall("SELECT revision FROM _replicad_tombstones")
    assert list(tomb) == [(4,)]
    await replica.apply_page(TARGET, page(up("deal", 7, 4, name="stale")))
    assert await rows(replica, "deal") == {}
    await replica.apply_page(TARGET, page(up("deal", 7, 9, name="back")))
    assert (await rows(replica, "deal"))[7]["name"] == "back"


async def test_delete_of_unknown_id_leaves_no_row(replica: Replica) -> None:
    """Deleting a record the replica never had is a no-op."""
    await replica.apply_page(TARGET, page(up("lead", 1, 1), gone("lead", 99)))
    assert list(await rows(replica, "lead")) == [1]


async def test_same_record_twice_in_one_page(replica: Replica) -> None:
    """A page carrying a record twice applies them in order."""
    await replica.apply_page(
        TARGET, page(up("lead", 1, 1, n=1), up("lead", 1, 2, n=2), gone("lead", 1))
    )
    assert await rows(replica, "lead") == {}


async def test_schema_evolution_adds_columns(replica: Replica) -> None:
    """A field first seen later becomes a new column; earlier rows keep their data."""
    await replica.apply_page(TARGET, page(up("contact", 1, 1, name="a")))
    result = await replica.apply_page(TARGET, page(up("contact", 2, 1, name="b", rank=3)))
    assert result.new_columns == ["contact.rank"]
    got = await rows(replica, "contact")
    assert got[1]["name"] == "a" and got[1]["rank"] is None and got[2]["rank"] == 3


async def test_field_names_are_normalized(replica: Replica) -> None:
    """Non-identifier and colliding field names get distinct safe columns."""
    data = {"first name": 1, "first-name": 2, "_revision": 3, "Name": 4, "name": 5, "9x": 6}
    await replica.apply_page(TARGET, page(up("contact", 1, 1, **data)))
    cols = await replica.db.execute_fetchall(
        "SELECT field, col FROM _replicad_fields ORDER BY position"
    )
    mapping: dict[str, str] = {str(f): str(c) for f, c in cols}
    assert mapping["first name"] == "first_name" and mapping["first-name"] == "first_name_2"
    assert mapping["_revision"] == "f_revision" and mapping["9x"] == "f_9x"
    assert mapping["Name"] == "Name" and mapping["name"] == "name_2"
    row = (await rows(replica, "contact"))[1]
    assert row["_revision"] == 1 and row["f_revision"] == 3


async def test_unstorable_items_are_quarantined_and_acked(replica: Replica) -> None:
    """Bad type names are quarantined with their raw JSON; their ack keys are pending."""
    hostile = up("contact; DROP TABLE x", 1, 1)
    reserved = up("sqlite_master", 2, 1)
    raw = BadItem('{"data":[1]}', "item data is not an object", "Contact-3-1")
    batch = PageBatch([hostile, reserved, up("contact", 4, 1)], [raw])
    result = await replica.apply_page(TARGET, batch)
    assert result.quarantined == 3
    reasons = await replica.db.execute_fetchall("SELECT reason, raw FROM replicad_quarantine")
    assert len(list(reasons)) == 3
    keys = set((await replica.pending_acks("crm", 100)).keys)
    assert keys == {hostile.ack_key, reserved.ack_key, "Contact-3-1", "contact-4-1"}
    assert list(await rows(replica, "contact")) == [4]


async def test_failed_objects_recorded_then_cleared(replica: Replica) -> None:
    """failed_objects are kept until the object arrives."""
    await replica.apply_page(TARGET, PageBatch([], [], [FailedObject("deal", "5")]))
    seen = await replica.db.execute_fetchall("SELECT failed_objects FROM replicad_syncs")
    assert list(seen) == [(1,)]
    await replica.apply_page(TARGET, page(up("deal", 5, 1)))
    seen = await replica.db.execute_fetchall("SELECT failed_objects FROM replicad_syncs")
    assert list(seen) == [(0,)]


async def test_failed_objects_with_unstorable_text_are_kept_escaped(replica: Replica) -> None:
    """A failed object whose type or id holds a lone surrogate is kept (escaped); the
    page is applied, not failed forever."""
    odd = FailedObject("de\ud800al", "5\udfff")
    await replica.apply_page(TARGET, PageBatch([up("deal", 1, 1)], [], [odd]))
    kept = await replica.db.execute_fetchall("SELECT type, id FROM _replicad_failed_objects")
    assert list(kept) == [("de\\ud800al", "5\\udfff")]
    assert list(await rows(replica, "deal")) == [1]


async def test_ack_keys_are_read_only_after_their_pages_are_durable(replica: Replica) -> None:
    """Pages commit without an fsync of their own; reading ack keys to send first makes
    a FULL commit (whose fsync covers every page before it), and only when pages were
    committed since the last one."""
    writer = replica._writer  # the connection pages are applied on
    assert writer is not None
    trace: list[str] = []
    writer.set_trace_callback(trace.append)
    await replica.pending_acks("crm", 10)  # a previous process may have left pages
    await replica.apply_page(TARGET, page(up("contact", 1, 1)))
    await replica.apply_page(TARGET, page(up("contact", 2, 1)))
    await replica.pending_acks("crm", 10)
    await replica.pending_acks("crm", 10)  # nothing applied since: no barrier
    writer.set_trace_callback(None)

    def at(fragment: str) -> list[int]:
        return [i for i, sql in enumerate(trace) if fragment in sql]

    commits, barriers, reads = at("COMMIT"), at("'durable_at'"), at("FROM _replicad_pending_acks")
    pragmas = [(i, "NORMAL" in trace[i]) for i in at("PRAGMA synchronous")]
    assert len(commits) == 2
    for commit in commits:  # NORMAL just for the page, FULL right after
        assert [normal for i, normal in pragmas if i < commit][-1]
        assert not next(normal for i, normal in pragmas if i > commit)
    assert len(barriers) == 2 and len(reads) == 3
    assert barriers[0] < reads[0] < commits[0] and commits[1] < barriers[1] < reads[1]
    sync = writer.execute("PRAGMA synchronous").fetchone()[0]
    assert sync == 2  # FULL for everything but page applies


async def test_a_page_left_open_by_a_failure_is_rolled_back(
    replica: Replica, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If applying fails and leaves its transaction open (its own ROLLBACK failed), the
    page is rolled back: its ack keys are never read to be sent, FULL is restored."""

    def broken(db: sqlite3.Connection, *args: object) -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO _replicad_pending_acks (connection, keys, n) VALUES ('crm', ?, 1)",
            ('["ghost"]',),
        )
        raise OSError("disk I/O error")

    monkeypatch.setattr("replicad.store.replica.apply_page", broken)
    with pytest.raises(OSError):
        await replica.apply_page(TARGET, page(up("contact", 1, 1)))
    monkeypatch.undo()
    assert (await replica.pending_acks("crm", 10)).keys == []
    writer = replica._writer
    assert writer is not None and writer.execute("PRAGMA synchronous").fetchone()[0] == 2


async def test_acks_pending_until_forgotten(replica: Replica) -> None:
    """Ack keys are recorded in the page's transaction and dropped once sent."""
    await replica.apply_page(TARGET, page(up("contact", 1, 1), up("contact", 2, 1)))
    batch = await replica.pending_acks("crm", 10)
    assert sorted(batch.keys) == ["contact-1-1", "contact-2-1"]
    assert await replica.count_pending_acks("crm") == 2
    await replica.forget_acks(batch)
    assert (await replica.pending_acks("crm", 10)).keys == []


async def test_app_edits_refused_on_pull_only_table(replica: Replica) -> None:
    """An app's INSERT/UPDATE/DELETE on a pull-only table fails with a clear error."""
    await replica.apply_page(TARGET, page(up("contact", 1, 1, name="a")))
    app = sqlite3.connect(replica.path, timeout=5)
    try:
        for sql in (
            "INSERT INTO contact (name, _internal_id) VALUES ('x', 'y')",
            "UPDATE contact SET name = 'z'",
            "DELETE FROM contact",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="pulled by sync 'mirror'"):
                app.execute(sql)
        app.rollback()
        assert app.execute("SELECT name FROM contact").fetchall() == [("a",)]
    finally:
        app.close()


async def test_device_uuid_is_stable(replica: Replica) -> None:
    """The device UUID is generated once and kept."""
    first = await replica.device_uuid("crm")
    assert await replica.device_uuid("crm") == first
    assert await replica.device_uuid("other") != first


async def test_two_new_types_differing_in_case_in_one_page(replica: Replica) -> None:
    """The first page brings `contact` and `Contact`: the first keeps the name, the
    other is quarantined; the page is applied, not failed on every attempt."""
    result = await replica.apply_page(
        TARGET, page(up("contact", 1, 1, name="a"), up("Contact", 2, 1, name="b"))
    )
    assert result.quarantined == 1 and result.ack_keys == 2
    assert list(await rows(replica, "contact")) == [1]


async def test_types_that_cannot_have_a_table_are_quarantined_alone(replica: Replica) -> None:
    """A type differing only in case from a table, or naming an app's own table, is
    quarantined (and acknowledged); the items around it are applied."""
    await replica.apply_page(TARGET, page(up("contact", 1, 1, name="a")))
    await replica.db.execute("CREATE TABLE invoices (n INTEGER)")
    await replica.db.commit()
    result = await replica.apply_page(
        TARGET,
        page(
            up("Contact", 2, 1, name="b"),
            up("INVOICES", 3, 1, total=5),
            up("contact", 4, 1, name="c"),
        ),
    )
    assert result.quarantined == 2 and result.ack_keys == 3
    assert sorted(await rows(replica, "contact")) == [1, 4]
    reasons = await replica.db.execute_fetchall("SELECT reason FROM _replicad_quarantine")
    assert [r[0] for r in reasons] == [
        "type name differs only in case from table contact",
        "table name INVOICES is taken by invoices, which replicad does not manage",
    ]


async def test_a_type_past_the_column_limit_is_quarantined_item_by_item(
    replica: Replica,
) -> None:
    """Items that would take a type past SQLite's column limit are quarantined; the
    type's other items, and its fields so far, are kept."""
    wide = {f"f{i}": i for i in range(1985)}
    await replica.apply_page(TARGET, page(up("wide", 1, 1, **wide)))
    more = {f"g{i}": i for i in range(10)}
    result = await replica.apply_page(
        TARGET, page(up("wide", 2, 1, **more), up("wide", 3, 1, f0=7, f1=8))
    )
    assert result.quarantined == 1 and result.ack_keys == 2
    got = await rows(replica, "wide")
    assert sorted(got) == [1, 3] and got[3]["f0"] == 7
