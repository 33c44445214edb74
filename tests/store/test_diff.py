"""The diff engine: a source query against what was last enqueued, as outbox entries
(only changed fields, vanished keys for mirror, marks with ties, crash safety)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from replicad.store import DiffSpec, PushSource, Replica, SourceError, diff_enqueue, outbox_name


def source(path: Path, rows: list[tuple[Any, ...]], *, wal: bool = True) -> None:
    """An app's table items(k, name, price, t)."""
    db = sqlite3.connect(path, isolation_level=None)
    if wal:
        db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE IF NOT EXISTS items (k, name, price, t)")
    db.execute("DELETE FROM items")
    db.executemany("INSERT INTO items VALUES (?, ?, ?, ?)", rows)
    db.close()


def spec(app: Path, operation: str = "upsert", **kw: Any) -> DiffSpec:
    return DiffSpec("s", "SELECT * FROM items", app, "k", kw.pop("columns", None), operation,
                    **kw)  # fmt: skip


async def entries(replica: Replica) -> list[tuple[str, str, dict[str, Any]]]:
    """(op, state, data) of the sync's outbox entries, in order."""
    rows = await replica.db.execute_fetchall(
        "SELECT op, state, payload FROM _replicad_outbox WHERE tbl = ? ORDER BY seq",
        (outbox_name("s"),),
    )
    return [(str(o), str(s), json.loads(p)["data"]) for o, s, p in rows]


async def settle(replica: Replica) -> None:
    """Send everything pending (confirm it as the destination would)."""
    src = PushSource("s", outbox_name("s"))
    while (batch := await replica.take_push_batch(src, 100)) is not None:
        await replica.record_push(
            src.table, [_Ok(i.entry, str(1000 + i.entry)) for i in batch.items]
        )


class _Ok:
    def __init__(self, entry: int, id_: str) -> None:
        self.entry, self.id = entry, id_
        self.rejected = self.sync_id = self.transfer_id = None
        self.written, self.not_found, self.in_doubt = True, False, False


@pytest.mark.parametrize("wal", [True, False])
async def test_new_changed_and_unchanged_rows(replica: Replica, tmp_path: Path, wal: bool) -> None:
    """New keys are inserts with the whole row; a changed row is an update of only its
    changed fields (plus the identifier); an unchanged source enqueues nothing."""
    app = tmp_path / "app.db"
    source(app, [(1, "a", 10, None), (2, "b", 20, None)], wal=wal)
    counts = await replica.diff_source(spec(app))
    assert (counts.created, counts.updated) == (2, 0)
    assert await entries(replica) == [
        ("insert", "pending", {"k": 1, "name": "a", "price": 10}),
        ("insert", "pending", {"k": 2, "name": "b", "price": 20}),
    ]
    await settle(replica)
    source(app, [(1, "a", 11, None), (2, "b", 20, None)], wal=wal)
    await replica.diff_source(spec(app))
    assert (await entries(replica))[-1] == ("update", "pending", {"k": 1, "price": 11})
    await settle(replica)
    again = await replica.diff_source(spec(app))
    assert again.rows == 0


async def test_a_change_before_sending_folds_into_the_insert(
    replica: Replica, tmp_path: Path
) -> None:
    """A row changed again before its insert went is still one entry (one insert)."""
    app = tmp_path / "app.db"
    source(app, [(1, "a", 10, None)])
    await replica.diff_source(spec(app))
    source(app, [(1, "a2", 10, None)])
    await replica.diff_source(spec(app))
    assert await entries(replica) == [("insert", "pending", {"k": 1, "name": "a2", "price": 10})]


async def test_mirror_deletes_vanished_keys_by_remote_id(replica: Replica, tmp_path: Path) -> None:
    """mirror: a key gone from the source is a delete naming the record; a key never
    sent is simply dropped."""
    app = tmp_path / "app.db"
    source(app, [(1, "a", 1, None), (2, "b", 2, None)])
    await replica.diff_source(spec(app, "mirror"))
    await settle(replica)
    source(app, [(1, "a", 1, None), (3, "c", 3, None)])
    await replica.diff_source(spec(app, "mirror"))  # 3 is new, not sent yet
    source(app, [(1, "a", 1, None)])
    counts = await replica.diff_source(spec(app, "mirror"))
    assert counts.deleted == 0  # 2 went in the run before
    got = await entries(replica)
    assert [(o, s) for o, s, _ in got] == [
        ("insert", "confirmed"), ("insert", "confirmed"), ("delete", "pending"),
    ]  # fmt: skip
    assert got[2][2] == {"k": 2}


async def test_keys_keep_their_type_and_nulls_are_invalid(replica: Replica, tmp_path: Path) -> None:
    """1 and '1' are two rows; a row without an identifier is counted, never sent."""
    app = tmp_path / "app.db"
    source(app, [(1, "int", 1, None), ("1", "text", 1, None), (None, "x", 0, None)])
    counts = await replica.diff_source(spec(app))
    assert (counts.created, counts.invalid) == (2, 1)


async def test_duplicate_identifiers_fail_and_send_nothing(
    replica: Replica, tmp_path: Path
) -> None:
    """A primary identifier that is not unique fails the diff, naming the duplicates."""
    app = tmp_path / "app.db"
    source(app, [(7, "a", 1, None), (7, "b", 2, None), (8, "c", 3, None)])
    with pytest.raises(SourceError, match=r"not unique: 1 value.*7"):
        await replica.diff_source(spec(app))
    assert await entries(replica) == []


async def test_high_water_mark_ties_and_order(replica: Replica, tmp_path: Path) -> None:
    """append with a mark: rows at the mark already sent are skipped, new ties and rows
    past it are sent once, rows before it never."""
    app = tmp_path / "app.db"
    source(app, [(1, "a", 1, "t1"), (2, "b", 1, "t2")])
    s = spec(app, "append", high_water_mark="t")
    assert (await replica.diff_source(s)).created == 2
    source(app, [(1, "a", 1, "t1"), (2, "b", 1, "t2"), (3, "c", 1, "t2"), (4, "d", 1, "t3"),
                 (5, "e", 1, "t0")])  # fmt: skip
    assert (await replica.diff_source(s)).created == 2
    assert (await replica.diff_source(s)).created == 0
    assert [d["k"] for _, _, d in await entries(replica)] == [1, 2, 3, 4]


async def test_a_crash_between_chunks_loses_and_repeats_nothing(
    replica: Replica, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the first chunk committed: the next diff enqueues exactly the
    rest (each chunk's entries commit with their diff state)."""
    app = tmp_path / "app.db"
    source(app, [(i, f"n{i}", i, None) for i in range(25)])
    monkeypatch.setattr(diff_enqueue, "CHUNK", 10)
    real = diff_enqueue._enqueue_rows
    calls = 0

    def flaky(*args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError("disk gone")
        real(*args)

    monkeypatch.setattr(diff_enqueue, "_enqueue_rows", flaky)
    with pytest.raises(OSError):
        await replica.diff_source(spec(app))
    assert len(await entries(replica)) == 10
    await replica.diff_source(spec(app))
    got = await entries(replica)
    assert sorted(d["k"] for _, _, d in got) == list(range(25))


async def test_specific_columns_ignore_other_changes(replica: Replica, tmp_path: Path) -> None:
    """With specific columns, a change in another column is no change at all."""
    app = tmp_path / "app.db"
    source(app, [(1, "a", 1, None)])
    s = spec(app, columns=("name",))
    await replica.diff_source(s)
    await settle(replica)
    source(app, [(1, "a", 99, None)])
    assert (await replica.diff_source(s)).rows == 0


async def test_a_value_json_cannot_carry_is_invalid_not_fatal(
    replica: Replica, tmp_path: Path
) -> None:
    """Infinity (which SQLite stores) makes its row invalid; the other rows still go."""
    app = tmp_path / "app.db"
    source(app, [(1, "a", float("inf"), None), (2, "b", 2, None)])
    counts = await replica.diff_source(spec(app))
    assert (counts.created, counts.invalid) == (1, 1)
    assert [d["k"] for _, _, d in await entries(replica)] == [2]


async def test_a_change_in_the_sixteenth_digit_of_a_real_is_a_change(
    replica: Replica, tmp_path: Path
) -> None:
    """Reals are compared exactly, not as JSON's 15 digits."""
    app = tmp_path / "app.db"
    source(app, [(1, "a", 1234567.891234567, None)])
    await replica.diff_source(spec(app))
    await settle(replica)
    source(app, [(1, "a", 1234567.891234568, None)])
    assert (await replica.diff_source(spec(app))).updated == 1
    assert (await entries(replica))[-1][2] == {"k": 1, "price": 1234567.891234568}


async def test_a_key_back_after_its_delete_never_takes_the_deleted_records_id(
    replica: Replica, tmp_path: Path
) -> None:
    """A key that vanishes (its delete in flight) and comes back is created anew: the
    delete's answer never names the new row's record."""
    app = tmp_path / "app.db"
    src = PushSource("s", outbox_name("s"))
    source(app, [(1, "a", 1, None)])
    await replica.diff_source(spec(app, "mirror"))
    await settle(replica)  # created as record 1001
    source(app, [])
    await replica.diff_source(spec(app, "mirror"))
    delete = await replica.take_push_batch(src, 10)
    assert delete is not None and [(i.op, i.id) for i in delete.items] == [("delete", "1001")]
    source(app, [(1, "a", 1, None)])
    await replica.diff_source(spec(app, "mirror"))
    await replica.record_push(src.table, [_Ok(delete.items[0].entry, "1001")])
    again = await replica.take_push_batch(src, 10)
    assert again is not None and [(i.op, i.id) for i in again.items] == [("insert", None)]


async def test_a_create_confirmed_without_id_is_deleted_by_key_even_much_later(
    replica: Replica, tmp_path: Path
) -> None:
    """A create accepted without an id (a 202) is still deleted when its key vanishes,
    after its outbox entry is long gone: by its identifier."""
    app = tmp_path / "app.db"
    src = PushSource("s", outbox_name("s"))
    source(app, [(5, "a", 1, None)])
    await replica.diff_source(spec(app, "mirror"))
    batch = await replica.take_push_batch(src, 10)
    assert batch is not None
    ok = _Ok(batch.items[0].entry, "x")
    ok.id = None  # type: ignore[assignment]
    await replica.record_push(src.table, [ok])
    await replica.db.execute("DELETE FROM _replicad_outbox")  # purged after 7 days
    await replica.db.commit()
    source(app, [])
    assert (await replica.diff_source(spec(app, "mirror"))).deleted == 1
    assert await entries(replica) == [("delete", "pending", {"k": 5})]


async def test_staging_keeps_each_values_type_and_comments_end_queries(
    replica: Replica, tmp_path: Path
) -> None:
    """A UNION of an integer and a text column keeps '7' text (two keys, stable across
    cycles), and a query ending in a -- comment works."""
    app = tmp_path / "app.db"
    source(app, [(7, "int", 1, None)])
    db = sqlite3.connect(app)
    db.execute("CREATE TABLE other (k TEXT, name, price, t)")
    db.execute("INSERT INTO other VALUES ('7', 'text', 1, NULL)")
    db.commit()
    db.close()
    query = "SELECT * FROM items UNION ALL SELECT * FROM other -- both"
    s = DiffSpec("s", query, app, "k", None, "mirror")
    assert (await replica.diff_source(s)).created == 2
    again = await replica.diff_source(s)
    assert (again.rows, again.deleted) == (0, 0)


async def _send_in_doubt(replica: Replica, src: PushSource) -> _Ok:
    """Send the next batch (one create) and record its outcome as in doubt."""
    batch = await replica.take_push_batch(src, 10)
    assert batch is not None
    doubt = _Ok(batch.items[0].entry, "x")
    doubt.id, doubt.rejected = None, "may have arrived"  # type: ignore[assignment]
    doubt.in_doubt = True
    await replica.record_push(src.table, [doubt])
    return doubt


async def test_a_change_of_a_create_in_doubt_waits_and_joins_it_on_retry(
    replica: Replica, tmp_path: Path
) -> None:
    """A diffed create in doubt (its answer lost, no lookup) whose source row changes
    keeps what it sent; the change waits apart (sent before, it could end not_found and
    be lost), and `replicad retry` posts one create with both."""
    app = tmp_path / "app.db"
    src = PushSource("s", outbox_name("s"))
    source(app, [(1, "a", 10, None)])
    await replica.diff_source(spec(app))
    doubt = await _send_in_doubt(replica, src)
    source(app, [(1, "a", 11, None)])
    await replica.diff_source(spec(app))
    assert await entries(replica) == [
        ("insert", "in_doubt", {"k": 1, "name": "a", "price": 10}),
        ("update", "pending", {"k": 1, "price": 11}),
    ]
    assert await replica.take_push_batch(src, 10) is None
    assert await replica.requeue_rejected(None) == 0  # "all": never a create in doubt
    assert await replica.requeue_rejected(doubt.entry) == 1
    assert await entries(replica) == [("insert", "pending", {"k": 1, "name": "a", "price": 11})]


async def test_a_vanished_key_cancels_its_create_in_doubt_visibly(
    replica: Replica, tmp_path: Path
) -> None:
    """Under mirror, a key whose create is in doubt vanishes: the create is cancelled
    (never posted later by a retry), with a reason saying the record may remain."""
    app = tmp_path / "app.db"
    src = PushSource("s", outbox_name("s"))
    source(app, [(1, "a", 10, None)])
    await replica.diff_source(spec(app, "mirror"))
    await _send_in_doubt(replica, src)
    source(app, [])
    await replica.diff_source(spec(app, "mirror"))
    assert [e[:2] for e in await entries(replica)] == [("insert", "cancelled")]
    assert await replica.requeue_rejected(None) == 0
    reason = await replica.db.execute_fetchall("SELECT reason FROM _replicad_outbox")
    assert "still at the destination" in str(reason[0][0])
