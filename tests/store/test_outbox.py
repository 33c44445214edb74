"""Local edits: capture by triggers, coalescing, batches, outcomes, merges, conflicts."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from replicad.store import Association, PushSource, Replica
from tests.store.conftest import TARGET, gone, page, payload, up

SOURCE = PushSource(sync="out", table="contact")


@dataclass(frozen=True)
class Said:
    """A destination's answer about one entry (the shape connectors return)."""

    entry: int
    id: str | None = None
    rejected: str | None = None
    sync_id: str | None = None
    transfer_id: str | None = None
    written: bool = True
    not_found: bool = False
    in_doubt: bool = False


@pytest.fixture
async def pushed(replica: Replica) -> AsyncIterator[Replica]:
    """A replica whose contact table was pulled and is a push source."""
    await replica.apply_page(
        TARGET,
        page(
            up("contact", 1, 10, name="Ada", vip=True, tags=["a"], email="ada@x"),
            up("contact", 2, 10, name="Bob", vip=False, tags=[], email="bob@x"),
        ),
    )
    await replica.register_push([SOURCE])
    yield replica


@pytest.fixture
def app(pushed: Replica) -> Iterator[sqlite3.Connection]:
    """Another connection, as a local app would open it."""
    db = sqlite3.connect(pushed.path, timeout=5, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


def outbox(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """The outbox view's rows."""
    cur = db.execute("SELECT * FROM replicad_outbox ORDER BY entry")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def one(db: sqlite3.Connection, sql: str, *args: Any) -> Any:
    """The first column of the first row."""
    return db.execute(sql, args).fetchone()[0]


async def test_insert_behaves_like_a_plain_table(app: sqlite3.Connection) -> None:
    """INSERT gets a generated _internal_id and _pending = 1; lastrowid and RETURNING work."""
    cur = app.execute("INSERT INTO contact (name) VALUES ('Cy') RETURNING _internal_id, _pending")
    iid, pending = cur.fetchone()
    cur.close()
    assert len(iid) == 32 and pending == 1
    cur = app.execute("INSERT INTO contact (name, _internal_id) VALUES ('Di', 'mine')")
    assert cur.rowcount == 1 and cur.lastrowid is not None
    assert one(app, "SELECT name FROM contact WHERE rowid = ?", cur.lastrowid) == "Di"
    entries = outbox(app)
    assert [(e["op"], e["state"], e["internal_id"]) for e in entries] == [
        ("insert", "pending", iid),
        ("insert", "pending", "mine"),
    ]


async def test_update_records_changed_fields_and_coalesces(app: sqlite3.Connection) -> None:
    """An UPDATE records exactly the fields it changed; edits of a row fold into one entry."""
    cur = app.execute("UPDATE contact SET name = 'Ada L', vip = 1 WHERE id = 1")
    assert cur.rowcount == 1
    app.execute("UPDATE contact SET email = 'ada@l' WHERE id = 1")
    app.execute("UPDATE contact SET name = name WHERE id = 2")  # no real change
    entries = outbox(app)
    assert len(entries) == 1
    assert sorted(json.loads(entries[0]["fields"])) == ["email", "name"]
    assert one(app, "SELECT _pending FROM contact WHERE id = 1") == 1
    assert one(app, "SELECT _pending FROM contact WHERE id = 2") == 0


async def test_refused_edits_change_nothing(app: sqlite3.Connection) -> None:
    """DELETE (no destination can delete) and identity changes fail and change nothing."""
    with pytest.raises(sqlite3.IntegrityError, match="DELETE on table contact"):
        app.execute("DELETE FROM contact WHERE id = 1")
    with pytest.raises(sqlite3.IntegrityError, match="managed by replicad"):
        app.execute("UPDATE contact SET id = 9 WHERE id = 1")
    iid = one(app, "SELECT _internal_id FROM contact WHERE id = 1")
    for sql in (
        "INSERT INTO contact (id, name) VALUES (7, 'x')",
        f"INSERT OR REPLACE INTO contact (_internal_id, name) VALUES ('{iid}', 'x')",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="use UPDATE"):
            app.execute(sql)
    assert one(app, "SELECT count(*) FROM contact") == 2
    assert outbox(app) == []


async def test_batch_payload_types_and_confirmation(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """Inserts send the whole row and updates the changed fields, in their JSON types;
    a confirmation writes the remote id and clears _pending."""
    app.execute(
        "INSERT INTO contact (name, vip, tags, _internal_id) VALUES ('Cy', 1, '[\"x\"]', 'c')"
    )
    app.execute("UPDATE contact SET vip = 0, tags = '[\"b\"]' WHERE id = 1")
    batch = await pushed.take_push_batch(SOURCE, 10)
    assert batch is not None and not batch.resend
    insert, update = batch.items
    assert payload(insert) == {
        "data": {"name": "Cy", "vip": True, "tags": ["x"]}, "id": None, "associations": []
    }  # fmt: skip
    assert payload(update)["data"] == {"vip": False, "tags": ["b"]} and payload(update)["id"] == "1"
    assert [e["state"] for e in outbox(app)] == ["in_flight", "in_flight"]
    counts = await pushed.record_push(
        "contact", [Said(insert.entry, id="77"), Said(update.entry, id="1")]
    )
    assert counts.confirmed == 2
    assert app.execute("SELECT id, _pending FROM contact WHERE _internal_id = 'c'").fetchone() == (
        77,
        0,
    )
    assert one(app, "SELECT _pending FROM contact WHERE id = 1") == 0
    assert await pushed.take_push_batch(SOURCE, 10) is None


async def test_unconfirmed_batch_is_resent_identically(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """An in-flight batch (lost answer, crash) comes back first, same tracking id and payload."""
    app.execute("UPDATE contact SET name = 'A2' WHERE id = 1")
    first = await pushed.take_push_batch(SOURCE, 10)
    app.execute("UPDATE contact SET name = 'A3' WHERE id = 1")  # a new entry, not folded
    again = await pushed.take_push_batch(SOURCE, 10)
    assert first is not None and again is not None and again.resend
    assert again.tracking_id == first.tracking_id and again.items == first.items
    await pushed.record_push("contact", [Said(e.entry, id="1") for e in again.items])
    assert one(app, "SELECT _pending FROM contact WHERE id = 1") == 1
    newer = await pushed.take_push_batch(SOURCE, 10)
    assert newer is not None and payload(newer.items[0])["data"] == {"name": "A3"}


async def test_rejection_keeps_edit_and_retry_requeues(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """A rejection keeps the payload and reason, does not block others; retry requeues."""
    app.execute("UPDATE contact SET email = 'bad' WHERE id = 1")
    app.execute("UPDATE contact SET name = 'B2' WHERE id = 2")
    batch = await pushed.take_push_batch(SOURCE, 10)
    assert batch is not None
    bad, good = batch.items
    await pushed.record_push(
        "contact", [Said(bad.entry, rejected="email invalid"), Said(good.entry, id="2")]
    )
    rows = {e["entry"]: e for e in outbox(app)}
    assert rows[bad.entry]["state"] == "rejected" and rows[bad.entry]["reason"] == "email invalid"
    assert json.loads(rows[bad.entry]["payload"])["data"] == {"email": "bad"}
    assert rows[good.entry]["state"] == "confirmed"
    assert one(app, "SELECT _pending FROM contact WHERE id = 1") == 1
    assert await pushed.take_push_batch(SOURCE, 10) is None
    assert await pushed.requeue_rejected(None) == 1
    again = await pushed.take_push_batch(SOURCE, 10)
    assert again is not None and [e.entry for e in again.items] == [bad.entry]


async def test_pushed_create_pulled_first_merges_rows(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """If the pull brings a pushed create before its id is read, the rows merge into one."""
    app.execute("INSERT INTO contact (name, email, _internal_id) VALUES ('Cy', 'cy@x', 'local')")
    batch = await pushed.take_push_batch(SOURCE, 10)
    assert batch is not None
    await pushed.apply_page(TARGET, page(up("contact", 50, 3, name="Cy", email="cy@x", vip=False)))
    assert one(app, "SELECT count(*) FROM contact") == 4
    counts = await pushed.record_push("contact", [Said(batch.items[0].entry, id="50")])
    assert counts.merged == 1
    rows = app.execute(
        "SELECT _internal_id, id, _revision, vip, _pending FROM contact WHERE id = 50"
    )
    assert rows.fetchall() == [("local", 50, 3, 0, 0)]
    # The pull of the same record now lands on the same row.
    await pushed.apply_page(TARGET, page(up("contact", 50, 4, name="Cy2", email="cy@x")))
    assert app.execute("SELECT _internal_id, name FROM contact WHERE id = 50").fetchall() == [
        ("local", "Cy2")
    ]


async def test_pull_merges_field_by_field_and_journals(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """A remote change to an edited row keeps the local fields and journals the remote."""
    app.execute("UPDATE contact SET name = 'Local' WHERE id = 1")
    result = await pushed.apply_page(
        TARGET, page(up("contact", 1, 11, name="Remote", vip=False, tags=["a"], email="new@x"))
    )
    assert result.conflicts == 1
    row = app.execute("SELECT name, email, vip, _revision, _pending FROM contact WHERE id = 1")
    assert row.fetchone() == ("Local", "new@x", 0, 11, 1)
    conflict = app.execute(
        "SELECT field, local_value, remote_value, revision, resolution FROM replicad_conflicts"
    ).fetchall()
    assert conflict == [("name", "Local", "Remote", 11, "local kept")]
    # The same value from both sides is no conflict.
    await pushed.apply_page(TARGET, page(up("contact", 1, 12, name="Local", email="new@x")))
    assert one(app, "SELECT count(*) FROM replicad_conflicts") == 1


async def test_conflict_remote_wins_when_configured(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """conflict = "remote" applies the remote value and journals the local one."""
    await pushed.register_push([PushSource("out", "contact", conflict="remote")])
    app.execute("UPDATE contact SET name = 'Local' WHERE id = 1")
    await pushed.apply_page(TARGET, page(up("contact", 1, 11, name="Remote", email="ada@x")))
    assert one(app, "SELECT name FROM contact WHERE id = 1") == "Remote"
    assert one(app, "SELECT _pending FROM contact WHERE id = 1") == 0
    assert [e["state"] for e in outbox(app)] == ["cancelled"]
    assert one(app, "SELECT resolution FROM replicad_conflicts") == "remote won"


async def test_remote_delete_of_edited_row_journals_and_cancels(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """A remote delete removes the edited row, cancels its entries and journals the edit."""
    app.execute("UPDATE contact SET name = 'Local' WHERE id = 1")
    await pushed.apply_page(TARGET, page(gone("contact", 1)))
    assert one(app, "SELECT count(*) FROM contact WHERE id = 1") == 0
    assert [e["state"] for e in outbox(app)] == ["cancelled"]
    assert app.execute(
        "SELECT field, local_value, resolution FROM replicad_conflicts"
    ).fetchall() == [("name", "Local", "deleted remotely")]


async def test_daemon_applies_never_enter_outbox(pushed: Replica, app: sqlite3.Connection) -> None:
    """Pulled inserts and updates of a push source are not captured."""
    await pushed.apply_page(
        TARGET, page(up("contact", 3, 1, name="C"), up("contact", 1, 20, name="A"))
    )
    assert outbox(app) == []


async def test_associations_carry_the_other_row(replica: Replica) -> None:
    """A declared association sends the referenced row with its own internal_id."""
    await replica.apply_page(
        TARGET, page(up("company", 5, 1, name="Acme"), up("contact", 1, 1, name="A", company_id=5))
    )
    src = PushSource(
        "out", "contact", associations=(Association("company_id", "company", "crm-company"),)
    )
    await replica.register_push([src])
    db = sqlite3.connect(replica.path, isolation_level=None)
    db.execute("INSERT INTO contact (name, company_id) VALUES ('B', 5)")
    db.close()
    batch = await replica.take_push_batch(src, 10)
    assert batch is not None
    (assoc,) = payload(batch.items[0])["associations"]
    assert assoc["type"] == "crm-company" and assoc["id"] == "5"
    assert assoc["data"] == {"name": "Acme"} and len(assoc["internal_id"]) > 0


async def test_merge_keeps_edits_made_on_the_pulled_duplicate(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """Edits an app made to the pulled copy of a pushed create survive the merge."""
    app.execute("INSERT INTO contact (name, email, _internal_id) VALUES ('Cy', 'cy@x', 'local')")
    batch = await pushed.take_push_batch(SOURCE, 10)
    assert batch is not None
    await pushed.apply_page(TARGET, page(up("contact", 77, 3, name="Cy", email="cy@x")))
    app.execute("UPDATE contact SET email = 'new@x' WHERE id = 77")
    await pushed.record_push("contact", [Said(batch.items[0].entry, id="77")])
    assert app.execute(
        "SELECT _internal_id, email, _pending FROM contact WHERE id = 77"
    ).fetchall() == [("local", "new@x", 1)]
    again = await pushed.take_push_batch(SOURCE, 10)
    assert again is not None and payload(again.items[0])["data"] == {"email": "new@x"}
    assert payload(again.items[0])["id"] == "77"


async def test_create_confirmed_without_id_takes_the_record_the_pull_brings(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """A create accepted without a remote id waits for the pull: the pulled record whose
    values equal what was sent lands on the local row, not on a second row."""
    app.execute("INSERT INTO contact (name, email, _internal_id) VALUES ('Cy', 'cy@x', 'loc')")
    batch = await pushed.take_push_batch(SOURCE, 10)
    assert batch is not None
    await pushed.record_push("contact", [Said(batch.items[0].entry)])
    (entry,) = [e for e in outbox(app) if e["internal_id"] == "loc"]
    assert entry["state"] == "confirmed" and entry["awaiting_id"] == 1
    await pushed.apply_page(
        TARGET,
        page(
            up("contact", 70, 3, name="Other", email="o@x"),
            up("contact", 77, 3, name="Cy", email="cy@x", phone="1"),
        ),
    )
    rows = app.execute("SELECT id, _internal_id, phone FROM contact WHERE name = 'Cy'").fetchall()
    assert rows == [(77, "loc", "1")]
    (entry,) = [e for e in outbox(app) if e["internal_id"] == "loc"]
    assert entry["awaiting_id"] == 0 and entry["remote_id"] == "77"
    # Later pulls of the record update that same row.
    await pushed.apply_page(TARGET, page(up("contact", 77, 4, name="Cy2", email="cy@x")))
    assert app.execute(
        "SELECT count(*), max(_internal_id) FROM contact WHERE id = 77"
    ).fetchone() == (
        1,
        "loc",
    )


async def test_create_confirmed_without_id_after_the_pull_brought_it(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """The record may arrive before the confirmation: it is adopted at confirmation."""
    app.execute("INSERT INTO contact (name, email, _internal_id) VALUES ('Cy', 'cy@x', 'loc')")
    batch = await pushed.take_push_batch(SOURCE, 10)
    assert batch is not None
    await pushed.apply_page(TARGET, page(up("contact", 77, 3, name="Cy", email="cy@x")))
    counts = await pushed.record_push("contact", [Said(batch.items[0].entry)])
    assert counts.merged == 1
    assert app.execute("SELECT id, _internal_id FROM contact WHERE name = 'Cy'").fetchall() == [
        (77, "loc")
    ]


async def test_a_create_is_adopted_by_a_record_stored_in_the_older_spelling(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """A record pulled before nested values were encoded by orjson keeps json's
    spelling of a negative exponent (1e-07, not 1e-7): it is still the create's record,
    not a second row."""
    app.execute(
        "INSERT INTO contact (name, tags, _internal_id) VALUES ('Cy', '[1e-07,\"a\"]', 'loc')"
    )
    batch = await pushed.take_push_batch(SOURCE, 10)
    assert batch is not None
    await pushed.apply_page(TARGET, page(up("contact", 77, 3, name="Cy", tags=[1e-07, "a"])))
    # As the version before stored it (past the capture, as the daemon writes).
    app.execute("BEGIN IMMEDIATE")
    app.execute("INSERT INTO _replicad_applying (flag) VALUES (1)")
    app.execute("UPDATE contact SET tags = '[1e-07,\"a\"]' WHERE id = 77")
    app.execute("DELETE FROM _replicad_applying")
    app.execute("COMMIT")
    counts = await pushed.record_push("contact", [Said(batch.items[0].entry)])
    assert counts.merged == 1
    assert app.execute("SELECT id, _internal_id FROM contact WHERE name = 'Cy'").fetchall() == [
        (77, "loc")
    ]


async def test_a_create_is_not_adopted_by_an_older_record_made_equal_to_it(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """Where each create makes a new record (CDM), a record the replica held before the
    create, edited remotely to the create's values in the page that brings the new
    record, is not taken for it: the create lands on its own record, and the edit held
    for it goes there, not to the other."""
    await pushed.register_push([BY_ID])
    await pushed.apply_page(TARGET, page(up("contact", 12, 1, name="Acme", email="old@acme")))
    app.execute("INSERT INTO contact (name, _internal_id) VALUES ('Acme', 'new-1')")
    batch = await pushed.take_push_batch(BY_ID, 10)
    assert batch is not None
    await pushed.record_push("contact", [Said(batch.items[0].entry)])  # no id
    app.execute("UPDATE contact SET email = 'me@new' WHERE _internal_id = 'new-1'")  # held
    await pushed.apply_page(
        TARGET,
        page(up("contact", 12, 2, name="Acme", email=None), up("contact", 99, 1, name="Acme")),
    )
    assert app.execute("SELECT id FROM contact WHERE _internal_id = 'new-1'").fetchone() == (99,)
    edit = await pushed.take_push_batch(BY_ID, 10)
    assert edit is not None and [i.id for i in edit.items] == ["99"]
    # Record 12 is untouched by it.
    assert app.execute("SELECT name, email, _pending FROM contact WHERE id = 12").fetchone() == (
        "Acme",
        None,
        0,
    )


async def test_a_create_the_destination_upserted_into_a_known_record_is_adopted_by_it(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """Where creates may land on a record the destination has (Endgrate upserts), a
    create accepted without an id is adopted by the record the replica held before,
    when the pull brings it with the create's values: one row, not two."""
    await pushed.apply_page(TARGET, page(up("contact", 12, 1, name="Old", email="a@acme")))
    app.execute("INSERT INTO contact (name, email, _internal_id) VALUES ('Ann', 'a@acme', 'n1')")
    batch = await pushed.take_push_batch(SOURCE, 10)
    assert batch is not None
    await pushed.record_push("contact", [Said(batch.items[0].entry)])  # no id
    await pushed.apply_page(TARGET, page(up("contact", 12, 2, name="Ann", email="a@acme")))
    rows = app.execute("SELECT id, _internal_id FROM contact WHERE email = 'a@acme'").fetchall()
    assert rows == [(12, "n1")]


async def test_the_rule_a_create_was_sent_under_holds_without_its_push_sync(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """Whether a create may have landed on a record the replica held is the push
    sync's rule when the create was sent: a process whose config lacks that push sync
    (a pull-only config) still keeps a CDM create off an older record."""
    await pushed.register_push([BY_ID])
    await pushed.apply_page(TARGET, page(up("contact", 12, 1, name="Acme", email="old@acme")))
    app.execute("INSERT INTO contact (name, _internal_id) VALUES ('Acme', 'new-1')")
    batch = await pushed.take_push_batch(BY_ID, 10)
    assert batch is not None
    await pushed.record_push("contact", [Said(batch.items[0].entry)])  # no id
    await pushed.register_push([])
    await pushed.apply_page(
        TARGET,
        page(up("contact", 12, 2, name="Acme", email=None), up("contact", 99, 1, name="Acme")),
    )
    assert app.execute("SELECT id FROM contact WHERE _internal_id = 'new-1'").fetchone() == (99,)


async def test_two_older_records_equal_to_a_create_are_not_guessed_between(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """Where a create may have landed on a record the replica held, two such records
    now equal to it leave the create waiting rather than taking one of them."""
    await pushed.apply_page(
        TARGET, page(up("contact", 12, 1, name="A1"), up("contact", 13, 1, name="A2"))
    )
    app.execute("INSERT INTO contact (name, _internal_id) VALUES ('Acme', 'n1')")
    batch = await pushed.take_push_batch(SOURCE, 10)
    assert batch is not None
    await pushed.record_push("contact", [Said(batch.items[0].entry)])  # no id
    await pushed.apply_page(
        TARGET, page(up("contact", 12, 2, name="Acme"), up("contact", 13, 2, name="Acme"))
    )
    assert app.execute("SELECT id FROM contact WHERE _internal_id = 'n1'").fetchone() == (None,)
    (entry,) = [e for e in outbox(app) if e["internal_id"] == "n1"]
    assert entry["awaiting_id"] == 1


async def test_a_create_without_id_whose_edit_went_on_its_own_is_adopted(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """Where updates need no id (Endgrate), an edit of a create accepted without an id
    goes at once; the pull may then bring the record with or without it: either way it
    is the create's record, not a second row."""
    for name_seen in ("Cyd", "Cy"):
        iid = f"cy-{name_seen}"
        email = f"{iid}@x"
        app.execute(
            "INSERT INTO contact (name, email, _internal_id) VALUES ('Cy', ?, ?)", (email, iid)
        )
        created = await pushed.take_push_batch(SOURCE, 10)
        assert created is not None
        await pushed.record_push("contact", [Said(created.items[0].entry)])  # no id
        app.execute("UPDATE contact SET name = 'Cyd' WHERE _internal_id = ?", (iid,))
        edited = await pushed.take_push_batch(SOURCE, 10)
        assert edited is not None and [(i.op, i.id) for i in edited.items] == [("update", None)]
        await pushed.record_push("contact", [Said(edited.items[0].entry)])
        new_id = 90 if name_seen == "Cyd" else 91
        await pushed.apply_page(TARGET, page(up("contact", new_id, 2, name=name_seen, email=email)))
        rows = app.execute(
            "SELECT id, _internal_id FROM contact WHERE email = ?", (email,)
        ).fetchall()
        assert rows == [(new_id, iid)], name_seen


async def test_unmatched_or_unwritten_creates_are_not_adopted(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """A pulled record with other values is not taken for the create; a create the
    destination did not write (sample data) waits for nothing."""
    app.execute("INSERT INTO contact (name, email, _internal_id) VALUES ('Cy', 'cy@x', 'a')")
    app.execute("INSERT INTO contact (name, email, _internal_id) VALUES ('Di', 'di@x', 'b')")
    batch = await pushed.take_push_batch(SOURCE, 10)
    assert batch is not None
    first, second = batch.items
    await pushed.record_push("contact", [Said(first.entry), Said(second.entry, written=False)])
    await pushed.apply_page(TARGET, page(up("contact", 77, 3, name="Cy", email="cy@other")))
    rows = app.execute(
        "SELECT id, _internal_id FROM contact WHERE id = 77 OR _internal_id IN ('a', 'b')"
    ).fetchall()
    assert (None, "a") in rows and (None, "b") in rows and len(rows) == 3
    assert {e["internal_id"]: e["awaiting_id"] for e in outbox(app)} == {"a": 1, "b": 0}


async def test_two_local_creates_merged_by_the_destination_keep_both_in_view(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """Two local inserts the destination confirms as one record (upsert by phone) keep
    one row; the other row's values go to replicad_conflicts, nothing vanishes."""
    app.execute("INSERT INTO contact (name, email, vip, _internal_id) VALUES ('A', 'a@x', 1, 'a')")
    app.execute("INSERT INTO contact (name, email, vip, _internal_id) VALUES ('B', 'b@x', 1, 'b')")
    batch = await pushed.take_push_batch(SOURCE, 10)
    assert batch is not None
    first, second = batch.items
    counts = await pushed.record_push(
        "contact", [Said(first.entry, id="90"), Said(second.entry, id="90")]
    )
    assert counts.confirmed == 2
    assert app.execute(
        "SELECT _internal_id, name, email FROM contact WHERE id = 90 OR id IS NULL"
    ).fetchall() == [("b", "B", "b@x")]
    journal = app.execute(
        "SELECT internal_id, id, field, local_value, remote_value, resolution "
        "FROM replicad_conflicts"
    ).fetchall()
    fields = {f: (lv, rv) for _, _, f, lv, rv, _ in journal}
    assert fields["_internal_id"] == ("a", "b")
    assert fields["name"] == ("A", "B") and fields["email"] == ("a@x", "b@x")
    assert {(i, rid, r) for i, rid, _, _, _, r in journal} == {
        ("a", 90, "merged by the destination into row b")
    }


async def test_pushed_create_meeting_its_pulled_copy_journals_nothing(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """The usual race (the pull brought the pushed record first) merges silently."""
    app.execute("INSERT INTO contact (name, email, _internal_id) VALUES ('Cy', 'cy@x', 'loc')")
    batch = await pushed.take_push_batch(SOURCE, 10)
    assert batch is not None
    await pushed.apply_page(TARGET, page(up("contact", 77, 3, name="Cy", email="cy@x")))
    await pushed.record_push("contact", [Said(batch.items[0].entry, id="77")])
    assert app.execute("SELECT count(*) FROM replicad_conflicts").fetchone() == (0,)


async def test_identical_awaiting_creates_each_take_their_own_record(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """Two identical creates accepted without ids take one pulled record each; a local
    create that already has its id is never taken for another."""
    for iid in ("a", "b"):
        app.execute(f"INSERT INTO contact (name, _internal_id) VALUES ('Twin', '{iid}')")
    app.execute("INSERT INTO contact (name, _internal_id) VALUES ('Twin', 'c')")
    batch = await pushed.take_push_batch(SOURCE, 10)
    assert batch is not None
    a, b, c = batch.items
    await pushed.record_push("contact", [Said(a.entry), Said(b.entry), Said(c.entry, id="42")])
    await pushed.apply_page(
        TARGET, page(up("contact", 43, 1, name="Twin"), up("contact", 44, 1, name="Twin"))
    )
    got = app.execute(
        "SELECT _internal_id, id FROM contact WHERE name = 'Twin' ORDER BY _internal_id"
    ).fetchall()
    assert got == [("a", 43), ("b", 44), ("c", 42)]
    assert app.execute("SELECT count(*) FROM replicad_conflicts").fetchone() == (0,)


async def test_a_resent_create_is_adopted_though_the_pull_came_before_the_resend(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """The record pulled between the first send and a resend still lands on the row."""
    app.execute("INSERT INTO contact (name, email, _internal_id) VALUES ('Cy', 'cy@x', 'loc')")
    first = await pushed.take_push_batch(SOURCE, 10)
    assert first is not None
    await pushed.apply_page(TARGET, page(up("contact", 77, 3, name="Cy", email="cy@x")))
    again = await pushed.take_push_batch(SOURCE, 10)  # a resend: sent_at moves on
    assert again is not None and again.resend
    await pushed.record_push("contact", [Said(again.items[0].entry)])
    assert app.execute("SELECT id, _internal_id FROM contact WHERE name = 'Cy'").fetchall() == [
        (77, "loc")
    ]


async def test_overlapping_batches_keep_each_rows_edits_in_order(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """While a batch is out (busy), another take leaves it alone and skips the rows it
    carries, so a row's second edit never overtakes its first; the busy batch, given
    up, is resent before anything of its rows."""
    app.execute("UPDATE contact SET name = 'A1' WHERE id = 1")
    busy: set[str] = set()
    first = await pushed.take_push_batch(SOURCE, 10, busy)
    assert first is not None and busy == {first.tracking_id}
    app.execute("UPDATE contact SET name = 'A2' WHERE id = 1")
    app.execute("UPDATE contact SET name = 'B1' WHERE id = 2")
    second = await pushed.take_push_batch(SOURCE, 10, busy)
    assert second is not None
    assert [i.data for i in second.items] == [{"name": "B1"}]  # row 1 waits
    assert await pushed.take_push_batch(SOURCE, 10, busy) is None
    busy.clear()  # both given up (e.g. a crash): resent, the older first
    again = await pushed.take_push_batch(SOURCE, 10, busy)
    assert again is not None and again.tracking_id == first.tracking_id and again.resend
    await pushed.record_push("contact", [Said(i.entry, id="1") for i in again.items])
    busy.discard(again.tracking_id)
    resent = await pushed.take_push_batch(SOURCE, 10, busy)
    assert resent is not None and resent.tracking_id == second.tracking_id
    await pushed.record_push("contact", [Said(i.entry, id="2") for i in resent.items])
    busy.clear()
    last = await pushed.take_push_batch(SOURCE, 10, busy)
    assert last is not None and [i.data for i in last.items] == [{"name": "A2"}]


# As a CDM push: updates name the record by id, and each create makes a new record.
BY_ID = PushSource(sync="out", table="contact", updates_need_id=True, creates_may_merge=False)


def _open(db: sqlite3.Connection, iid: str) -> list[tuple[str, str]]:
    """A row's outbox entries as (op, state), oldest first."""
    return [(e["op"], e["state"]) for e in outbox(db) if e["internal_id"] == iid]


@pytest.mark.parametrize("edit_during_send", [False, True])
async def test_an_edit_of_a_create_in_doubt_waits_apart_for_its_record(
    pushed: Replica, app: sqlite3.Connection, edit_during_send: bool
) -> None:
    """A create in doubt (its answer lost, no lookup) edited by the app — after the
    outcome, or while it was out — keeps what was sent; the edit waits apart, is not
    sent while the record's id is unknown, and goes out as an update of the record the
    pull brings (equal to what was sent), with the edited value kept locally."""
    app.execute("INSERT INTO contact (name, email, _internal_id) VALUES ('Cy', 'cy@x', 'cy-1')")
    batch = await pushed.take_push_batch(SOURCE, 10)
    assert batch is not None and not batch.resend
    if edit_during_send:
        app.execute("UPDATE contact SET name = 'Cyd' WHERE _internal_id = 'cy-1'")
    (entry,) = [i.entry for i in batch.items]
    await pushed.record_push("contact", [Said(entry, rejected="may have arrived", in_doubt=True)])
    if not edit_during_send:
        app.execute("UPDATE contact SET name = 'Cyd' WHERE _internal_id = 'cy-1'")
    assert _open(app, "cy-1") == [("insert", "in_doubt"), ("update", "pending")]
    (doubt,) = [e for e in outbox(app) if e["state"] == "in_doubt"]
    assert payload_data(doubt) == {"name": "Cy", "email": "cy@x"}
    app.execute("INSERT INTO contact (name, _internal_id) VALUES ('Bo', 'bo-1')")
    fresh = await pushed.take_push_batch(SOURCE, 10)
    assert fresh is not None and [i.data.get("name") for i in fresh.items] == ["Bo"]
    assert await pushed.take_push_batch(SOURCE, 10, {fresh.tracking_id}) is None
    await pushed.record_push("contact", [Said(i.entry, id="95") for i in fresh.items])
    assert not await pushed.has_outbox_work(SOURCE)  # the push loop sleeps meanwhile
    # The pull brings the record as it was created: it is this row's.
    await pushed.apply_page(TARGET, page(up("contact", 90, 1, name="Cy", email="cy@x")))
    rows = app.execute("SELECT id, name FROM contact WHERE email = 'cy@x'").fetchall()
    assert rows == [(90, "Cyd")]
    assert _open(app, "cy-1") == [("insert", "confirmed"), ("update", "pending")]
    edit = await pushed.take_push_batch(SOURCE, 10)
    assert edit is not None
    assert [(i.op, i.id, dict(i.data)) for i in edit.items] == [("update", "90", {"name": "Cyd"})]


async def _accepted_without_id_then_edited(pushed: Replica, app: sqlite3.Connection) -> None:
    """Row cy-1 created, its create accepted without an id (a 202), then edited."""
    app.execute("INSERT INTO contact (name, email, _internal_id) VALUES ('Cy', 'cy@x', 'cy-1')")
    batch = await pushed.take_push_batch(BY_ID, 10)
    assert batch is not None
    await pushed.record_push("contact", [Said(batch.items[0].entry)])
    app.execute("UPDATE contact SET name = 'Cyd' WHERE _internal_id = 'cy-1'")


async def test_an_edit_of_a_create_accepted_without_id_waits_for_its_id(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """A create accepted without an id (a 202) and then edited: where updates name the
    record by id, the edit waits until the pull brings the record (never sent as a
    second create); where they do not (internal ids), it goes at once."""
    await _accepted_without_id_then_edited(pushed, app)
    assert await pushed.take_push_batch(BY_ID, 10) is None
    assert not await pushed.has_outbox_work(BY_ID)  # the push loop sleeps meanwhile
    await pushed.apply_page(TARGET, page(up("contact", 91, 1, name="Cy", email="cy@x")))
    assert await pushed.has_outbox_work(BY_ID)
    edit = await pushed.take_push_batch(BY_ID, 10)
    assert edit is not None
    assert [(i.op, i.id, dict(i.data)) for i in edit.items] == [("update", "91", {"name": "Cyd"})]
    assert app.execute("SELECT id, name FROM contact WHERE email = 'cy@x'").fetchall() == [
        (91, "Cyd")
    ]


async def test_an_edit_held_for_an_id_goes_once_the_create_is_no_longer_kept(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """A create accepted without an id whose record the pull never matched is kept a
    week; then its row's held edit goes (a CDM destination's client refuses an update
    without an id, visibly): nothing waits forever."""
    await _accepted_without_id_then_edited(pushed, app)
    assert await pushed.take_push_batch(BY_ID, 10) is None
    assert not await pushed.has_outbox_work(BY_ID)
    app.execute("UPDATE _replicad_outbox SET finished_at = '2020-01-01T00:00:00.000Z'")
    assert await pushed.has_outbox_work(BY_ID)  # the push loop takes it on its own
    edit = await pushed.take_push_batch(BY_ID, 10)
    assert edit is not None and [(i.op, i.id) for i in edit.items] == [("update", None)]


async def test_a_create_confirmed_with_its_id_waits_for_nothing(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """A create marked as waiting for its record (a resend of a v4 create in doubt)
    that is confirmed with the record's id waits no more: the row's edits go at once."""
    app.execute("INSERT INTO contact (name, email, _internal_id) VALUES ('Cy', 'cy@x', 'cy-1')")
    batch = await pushed.take_push_batch(BY_ID, 10)
    assert batch is not None
    app.execute("UPDATE _replicad_outbox SET awaiting_id = 1 WHERE internal_id = 'cy-1'")
    await pushed.record_push("contact", [Said(batch.items[0].entry, id="97")])
    assert [e["awaiting_id"] for e in outbox(app) if e["internal_id"] == "cy-1"] == [0]
    app.execute("UPDATE contact SET name = 'Cyd' WHERE _internal_id = 'cy-1'")
    edit = await pushed.take_push_batch(BY_ID, 10)
    assert edit is not None and [(i.op, i.id) for i in edit.items] == [("update", "97")]


async def test_an_edit_of_a_create_accepted_without_id_goes_where_ids_are_not_needed(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """Where a destination keys records by internal id (Endgrate), an edit of a create
    accepted without an id is sent at once."""
    app.execute("INSERT INTO contact (name, email, _internal_id) VALUES ('Cy', 'cy@x', 'cy-1')")
    batch = await pushed.take_push_batch(SOURCE, 10)
    assert batch is not None
    await pushed.record_push("contact", [Said(batch.items[0].entry)])
    app.execute("UPDATE contact SET name = 'Cyd' WHERE _internal_id = 'cy-1'")
    edit = await pushed.take_push_batch(SOURCE, 10)
    assert edit is not None and [(i.op, i.id) for i in edit.items] == [("update", None)]


async def test_retry_of_a_create_in_doubt_takes_its_waiting_edit_along(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """`replicad retry ENTRY` of a create in doubt whose row was edited since posts one
    create of the row as it is now; the edit waiting apart is folded into it.
    `replicad retry --all` leaves it alone: it may already exist upstream."""
    app.execute("INSERT INTO contact (name, email, _internal_id) VALUES ('Cy', 'cy@x', 'cy-1')")
    batch = await pushed.take_push_batch(SOURCE, 10)
    assert batch is not None
    (entry,) = [i.entry for i in batch.items]
    await pushed.record_push("contact", [Said(entry, rejected="may have arrived", in_doubt=True)])
    app.execute("UPDATE contact SET name = 'Cyd' WHERE _internal_id = 'cy-1'")
    assert await pushed.requeue_rejected(None) == 0  # "all" never posts one in doubt
    assert await pushed.requeue_rejected(entry) == 1
    assert _open(app, "cy-1") == [("insert", "pending")]
    again = await pushed.take_push_batch(SOURCE, 10)
    assert again is not None and not again.resend
    assert [(i.op, i.data.get("name")) for i in again.items] == [("insert", "Cyd")]


def payload_data(entry: dict[str, Any]) -> dict[str, Any]:
    """The values an outbox entry sent."""
    return dict(json.loads(entry["payload"])["data"])


async def test_retry_posts_a_create_in_doubt_again(
    pushed: Replica, app: sqlite3.Connection
) -> None:
    """`replicad retry` of a create rejected in doubt posts it again, unchecked: the
    operator decided (the rejection's hint says so)."""
    app.execute("INSERT INTO contact (name, _internal_id) VALUES ('Cy', 'cy-1')")
    batch = await pushed.take_push_batch(SOURCE, 10)
    assert batch is not None
    (entry,) = [i.entry for i in batch.items]
    await pushed.record_push("contact", [Said(entry, rejected="may have arrived", in_doubt=True)])
    assert await pushed.requeue_rejected(entry) == 1
    again = await pushed.take_push_batch(SOURCE, 10)
    assert again is not None and not again.resend
