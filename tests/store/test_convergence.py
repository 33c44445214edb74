"""Property: any Sell-like delivery of a history converges to the clean run's replica.

Each record has a history of versions with increasing revisions, possibly ending in a
delete. A delivery repeats items, re-delivers unacknowledged ones in later sessions,
sends stale revisions after newer ones (even after the final state), splits pages
anywhere — but always delivers each record's final state at some point, and after a
delete only re-sends revisions that were delivered before it (any revision, when the
delete came first).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicad.store import PageBatch, PullTarget, RecordChange, Replica
from tests.store.conftest import TARGET, gone, rows, up

TYPES = ("contact", "deal")


@st.composite
def histories(draw: st.DrawFn) -> list[list[RecordChange]]:
    """Per record: versions (and maybe a final delete)."""
    out = []
    revision = 0
    for type_ in TYPES:
        for rid in range(1, draw(st.integers(1, 4)) + 1):
            versions = []
            for _ in range(draw(st.integers(1, 4))):
                revision += draw(st.integers(1, 3))
                fields: dict[str, Any] = {"v": revision}
                if draw(st.booleans()):
                    fields["extra"] = draw(st.one_of(st.none(), st.booleans(), st.text(max_size=3)))
                versions.append(up(type_, rid, revision, **fields))
            if draw(st.booleans()):
                versions.append(gone(type_, rid))
            out.append(versions)
    return out


@st.composite
def deliveries(draw: st.DrawFn, history: list[RecordChange]) -> list[RecordChange]:
    """A messy but Sell-possible delivery sequence for one record."""
    final = history[-1]
    live = [v for v in history if not v.deleted]
    seq: list[RecordChange] = []
    delivered_before_delete: list[RecordChange] = []
    for _ in range(draw(st.integers(0, 5))):
        item = draw(st.sampled_from(live))
        seq.append(item)
        delivered_before_delete.append(item)
    seq.append(final)
    # After the final state, stale (or duplicate) items may still arrive; after a
    # delete only ones delivered before it, whose revision the tombstone remembers, or,
    # when the record was deleted before any of it arrived, any of its versions.
    late = delivered_before_delete if final.deleted and delivered_before_delete else live
    if late:
        seq.extend(draw(st.lists(st.sampled_from(late), max_size=3)))
    return seq


@st.composite
def scenario(draw: st.DrawFn) -> tuple[list[list[RecordChange]], list[RecordChange], list[int]]:
    """Histories, one interleaved delivery stream, and page sizes."""
    hs = draw(histories())
    per_record = [draw(deliveries(h)) for h in hs]
    stream: list[RecordChange] = []
    cursors = [0] * len(per_record)
    while any(c < len(s) for c, s in zip(cursors, per_record, strict=True)):
        open_ = [i for i, s in enumerate(per_record) if cursors[i] < len(s)]
        i = draw(st.sampled_from(open_))
        stream.append(per_record[i][cursors[i]])
        cursors[i] += 1
    sizes = draw(st.lists(st.integers(1, 7), min_size=1, max_size=len(stream) or 1))
    return hs, stream, sizes


async def _replay(
    pages: list[list[RecordChange]], target: PullTarget = TARGET, *, raw: bool = False
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        replica = await Replica.open(Path(tmp) / "r.db")
        try:
            await replica.register_sync("mirror", "pull", "crm")
            for p in pages:
                await replica.apply_page(target, PageBatch(p))
            if raw:
                out: dict[str, Any] = {}
                for (t,) in await replica.db.execute_fetchall("SELECT name FROM replicad_tables"):
                    cur = await replica.db.execute(f'SELECT * FROM "{t}" ORDER BY _seq')
                    names = [d[0] for d in cur.description]
                    out[t] = [
                        (r["id"], r["_event_type"], r["_revision"], r.get("v"))
                        for r in (
                            dict(zip(names, row, strict=True)) for row in await cur.fetchall()
                        )
                    ]
                return out
            tables = [r[0] for r in await replica.db.execute_fetchall(
                "SELECT name FROM replicad_tables")]  # fmt: skip
            state = {}
            for t in tables:
                # Columns appear in first-seen order, which differs between runs.
                state[t] = {i: {k: v for k, v in r.items() if v is not None}
                            for i, r in (await rows(replica, t)).items()}  # fmt: skip
            return {t: v for t, v in state.items() if v}
        finally:
            await replica.close()


def _pages(stream: list[RecordChange], sizes: list[int]) -> list[list[RecordChange]]:
    out, i, k = [], 0, 0
    while i < len(stream):
        n = sizes[k % len(sizes)]
        out.append(stream[i : i + n])
        i, k = i + n, k + 1
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_messy_delivery_converges_to_clean_run(
    case: tuple[list[list[RecordChange]], list[RecordChange], list[int]],
) -> None:
    """Duplicates, re-deliveries, stale items and any page split give the clean replica."""
    hs, stream, sizes = case
    clean = anyio.run(_replay, [[h[-1] for h in hs]])
    messy = anyio.run(_replay, _pages(stream, sizes))
    assert messy == clean


APPEND = PullTarget(sync="mirror", connection="crm", apply_deletes=False, operation="append")
INSERT = PullTarget(sync="mirror", connection="crm", apply_deletes=False, operation="insert")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_append_keeps_each_item_once_in_arrival_order(
    case: tuple[list[list[RecordChange]], list[RecordChange], list[int]],
) -> None:
    """append: every distinct item (deletes too) is one history row, in the order it
    first arrived; duplicates and re-deliveries add nothing, whatever the page split."""
    _hs, stream, sizes = case
    got = anyio.run(lambda: _replay(_pages(stream, sizes), APPEND, raw=True))
    for type_ in TYPES:
        want: list[tuple[Any, ...]] = []
        for c in stream:
            item = (c.id, "deleted" if c.deleted else "updated", c.revision, c.data.get("v"))
            if c.type == type_ and item not in want:
                want.append(item)
        assert got.get(f"{type_}_history", []) == want


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_insert_keeps_the_first_version_seen(
    case: tuple[list[list[RecordChange]], list[RecordChange], list[int]],
) -> None:
    """insert: each record's row is the first version that arrived, never changed
    after (later revisions and deletes included), whatever the page split."""
    _hs, stream, sizes = case
    got = anyio.run(lambda: _replay(_pages(stream, sizes), INSERT))
    first: dict[str, dict[int, int]] = {}
    for c in stream:
        if not c.deleted:
            first.setdefault(c.type, {}).setdefault(c.id, c.data["v"])
    assert {t: {i: r["v"] for i, r in v.items()} for t, v in got.items()} == first


UPSERT = PullTarget(sync="mirror", connection="crm", apply_deletes=False, operation="upsert")
UPDATE = PullTarget(sync="mirror", connection="crm", apply_deletes=False, operation="update")


def _newest_live(stream: list[RecordChange]) -> dict[str, dict[int, int]]:
    """Per record, the value of the newest revision delivered (deletes aside)."""
    best: dict[tuple[str, int], RecordChange] = {}
    for c in stream:
        key = (c.type, c.id)
        if not c.deleted and (key not in best or c.revision > best[key].revision):
            best[key] = c
    out: dict[str, dict[int, int]] = {}
    for (type_, rid), c in best.items():
        out.setdefault(type_, {})[rid] = c.data["v"]
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_upsert_keeps_the_newest_version_and_ignores_deletes(
    case: tuple[list[list[RecordChange]], list[RecordChange], list[int]],
) -> None:
    """upsert: each record ends at the newest revision delivered, deletes ignored."""
    _hs, stream, sizes = case
    got = anyio.run(lambda: _replay(_pages(stream, sizes), UPSERT))
    assert {t: {i: r["v"] for i, r in v.items()} for t, v in got.items()} == _newest_live(stream)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario(), st.integers(0, 2**16))
def test_update_refreshes_only_rows_already_there(
    case: tuple[list[list[RecordChange]], list[RecordChange], list[int]], pick: int
) -> None:
    """update: rows already in the table end at the newest revision delivered; records
    not in the table are never added; deletes are ignored."""
    hs, stream, sizes = case
    # Some records are in the table first (their first version), the others are not.
    seeded = [h[0] for i, h in enumerate(hs) if not h[0].deleted and (pick >> (i % 16)) & 1]

    async def run() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            replica = await Replica.open(Path(tmp) / "r.db")
            try:
                await replica.register_sync("mirror", "pull", "crm")
                if seeded:
                    await replica.apply_page(TARGET, PageBatch(seeded))
                for p in _pages(stream, sizes):
                    await replica.apply_page(UPDATE, PageBatch(p))
                out: dict[str, Any] = {}
                for (t,) in await replica.db.execute_fetchall("SELECT name FROM replicad_tables"):
                    out[t] = {i: r["v"] for i, r in (await rows(replica, t)).items()}
                return {t: v for t, v in out.items() if v}
            finally:
                await replica.close()

    newest = _newest_live(stream)
    want: dict[str, dict[int, int]] = {}
    for c in seeded:
        # A seeded version newer than anything in the stream stays as it is.
        value = newest.get(c.type, {}).get(c.id, c.data["v"])
        in_stream = [x for x in stream if x.type == c.type and x.id == c.id and not x.deleted]
        if not any(x.revision > c.revision for x in in_stream):
            value = c.data["v"]
        want.setdefault(c.type, {})[c.id] = value
    assert anyio.run(run) == want
