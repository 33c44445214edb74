"""Property: the capture triggers and the outbox track exactly the app's unconfirmed edits.

A state machine drives a real replica file: the daemon pulls contacts (``apply_page``)
and the table is a push source; an app edits rows through its own connection, the
push takes batches and records confirmations, rejections or no answer at all, and
newer (or stale) revisions are pulled meanwhile. A Python model says which columns
each row changed since its last confirmed send, and what every cell holds.

Equality of cells is SQLite's: an UPDATE that writes a value the column already holds
(``IS``, so 1 and 1.0 are the same value) is no change and is not captured. A BLOB has
no JSON form: taking its entry rejects that entry alone.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from replicad.connectors.push_model import PushItem
from replicad.store import OutboxBatch, PushSource, RecordChange, Replica
from replicad.store.plan import UNKNOWN_REVISION
from replicad.store.values import SQLValue
from tests.store.conftest import TARGET, gone, page, payload, up

MAX_ID = 5
OPEN = ("pending", "in_flight", "rejected")

# Remote fields and the JSON values the remote sends for them. "extra" is first
# pulled mid-run: a new column, and the capture trigger is rebuilt to compare it.
REMOTE: dict[str, st.SearchStrategy[Any]] = {
    "name": st.sampled_from(["Ada", "Bob", "", "1"]) | st.text(max_size=2),
    "email": st.sampled_from(["a@x", "b@x", ""]),
    "vip": st.booleans(),
    "tags": st.lists(st.sampled_from(["a", "b"]), max_size=2),
    "score": st.sampled_from([0, 1, 2, 1.0, 2.5]),
    "extra": st.booleans() | st.integers(0, 2) | st.sampled_from(["e", "[1]"]),
}
BASE_FIELDS = ("name", "email", "vip", "tags", "score")
# A cell as an app may write it: a JSON-ish value, or a BLOB.
Cell = SQLValue | bytes
# What an app writes: cells that collide across types (1, 1.0, True), JSON-looking text.
APP_VALUES: st.SearchStrategy[Cell] = (
    st.sampled_from(
        [None, 0, 1, 2, 1.0, 2.5, True, False, "", "Ada", "x", "1", "[]", '["a"]', '{"k":1}', "[1"]
    )
    | st.text(max_size=2)
    | st.just(b"\x00b")
)
# Cheap fsyncs where there is a RAM disk: durability is not what is tested here.
SHM = Path("/dev/shm")


# A journaled conflict: id, field, local and remote value (tagged), revision, resolution.
Journaled = tuple[int, str, Any, Any, int, str]


def cell(value: Cell) -> Cell:
    """What SQLite stores for a value the app binds (sqlite3 binds True as 1)."""
    return int(value) if isinstance(value, bool) else value


def remote_cell(value: Any) -> SQLValue:
    """What the replica stores for a pulled JSON value."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert value is None or isinstance(value, int | float | str)
    return value


def sql_equal(a: Cell, b: Cell) -> bool:
    """SQLite's ``a IS b`` for the values used here (no affinity, so no conversions)."""
    if a is None or b is None:
        return a is b
    for storage in (str, bytes):
        if isinstance(a, storage) or isinstance(b, storage):
            return isinstance(a, storage) and isinstance(b, storage) and a == b
    return a == b  # numbers compare by value: 1 IS 1.0


def same_cell(a: Cell, b: Cell) -> bool:
    """The same stored cell: same type and value (what the merge journal compares)."""
    return type(a) is type(b) and a == b


def tag(value: Any) -> Any:
    """A JSON or SQL value with its types, so True, 1 and 1.0 compare different."""
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, tag(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("list", tuple(tag(v) for v in value))
    return (type(value).__name__, value)


def kind_of(value: Any) -> str:
    """A field's kind from its first non-null pulled value."""
    if isinstance(value, bool):
        return "boolean"
    return "json" if isinstance(value, list | dict) else "scalar"


def pushed(value: Cell, kind: str | None) -> Any:
    """The JSON value a cell goes upstream as: the type its field came in, if it fits."""
    if kind == "boolean" and type(value) is int and value in (0, 1):
        return bool(value)
    if kind == "json" and isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, list | dict) else value
    return value


@dataclass(frozen=True)
class Said:
    """A destination's answer about one entry."""

    entry: int
    id: str | None = None
    rejected: str | None = None
    sync_id: str | None = None
    transfer_id: str | None = None
    not_found: bool = False
    in_doubt: bool = False


@dataclass
class Flight:
    """A row's entry sent and not answered: when it was taken, its columns and payload."""

    entry: int
    taken: int
    columns: frozenset[str]
    payload: dict[str, Any]


@dataclass
class Row:
    """The model of one replica row."""

    internal_id: str
    revision: int
    cells: dict[str, Cell]
    # Columns the app changed and no confirmed send has carried since: column → step.
    changed: dict[str, int] = field(default_factory=dict)
    flight: Flight | None = None
    rejected: bool = False  # its open entry was rejected and not edited or retried since

    def waiting(self) -> set[str]:
        """Columns changed since the row's in-flight entry was taken (all: none in flight)."""
        taken = self.flight.taken if self.flight else -1
        return {c for c, at in self.changed.items() if at > taken}

    def pending(self) -> bool:
        """Whether the row has an entry the next new batch can take."""
        return not self.rejected and bool(self.waiting())


class CaptureMachine(RuleBasedStateMachine):
    """A replica, an app connection, and the model of what the outbox must hold."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(dir=SHM if SHM.is_dir() else None)
        self.loop = asyncio.Runner()
        path = Path(self.tmp.name) / "replica.db"
        self.replica = self.loop.run(self._open(path))
        self.app = sqlite3.connect(path, timeout=5, isolation_level=None)
        self.rows: dict[int, Row] = {}
        self.columns: list[str] = []
        self.kinds: dict[str, str] = {}
        self.batch: OutboxBatch | None = None
        self.tombstones: dict[int, int] = {}
        self.conflict = "merge"
        self.source = PushSource("out", "contact")
        self.step = 0
        self.conflicts_seen = 0

    @staticmethod
    async def _open(path: Path) -> Replica:
        replica = await Replica.open(path)
        await replica.register_sync("mirror", "pull", "crm")
        return replica

    def teardown(self) -> None:
        """Close the connections and delete the file."""
        self.app.close()
        self.loop.run(self.replica.close())
        self.loop.close()
        self.tmp.cleanup()

    # -- driving -----------------------------------------------------------------

    def _pull(self, changes: list[RecordChange]) -> int:
        """(e) Apply a page: it adds no outbox entry and at most cancels open ones."""
        before = self._outbox()
        result = self.loop.run(self.replica.apply_page(TARGET, page(*changes)))
        after = self._outbox()
        assert [e[0] for e in after] == [e[0] for e in before], "apply_page added entries"
        for old, new in zip(before, after, strict=True):
            if new != old:
                assert old[4] in OPEN and new[4] == "cancelled", (old, new)
                assert new[:4] + new[5:] == old[:4] + old[5:], (old, new)
        return result.conflicts

    def _expect_pull(self, changes: list[RecordChange]) -> list[Journaled]:
        """Update the model for a page, in order; the conflicts the journal must get."""
        fresh = [f for c in changes for f in c.data if f != "id" and f not in self.columns]
        self.columns += list(dict.fromkeys(fresh))
        if fresh:
            event("new column")
        for col in self.columns:
            first = next((c.data[col] for c in changes if c.data.get(col) is not None), None)
            if col not in self.kinds and first is not None:
                self.kinds[col] = kind_of(first)
        for known in self.rows.values():
            for col in self.columns:
                known.cells.setdefault(col, None)
        journal: list[Journaled] = []
        for c in changes:
            row = self.rows.get(c.id)
            if c.deleted:
                if row is not None:
                    journal += self._expect_delete(c.id, row)
                else:
                    # Deleted before ever seen: no later revision brings it back.
                    self.tombstones.setdefault(c.id, UNKNOWN_REVISION)
                continue
            remote: dict[str, Cell] = {col: remote_cell(c.data.get(col)) for col in self.columns}
            if row is None:
                if c.revision > self.tombstones.get(c.id, 0):
                    self.tombstones.pop(c.id, None)
                    self.rows[c.id] = Row("", c.revision, remote)  # internal id: see below
            elif c.revision > row.revision:
                journal += self._expect_update(c.id, row, c.revision, remote)
        for id_, row in self.rows.items():
            if not row.internal_id:
                (iid,) = self.app.execute(
                    "SELECT _internal_id FROM contact WHERE id = ?", (id_,)
                ).fetchone()
                row.internal_id = str(iid)
        return journal

    def _expect_update(
        self, id_: int, row: Row, revision: int, remote: dict[str, Cell]
    ) -> list[Journaled]:
        """(f) A newer revision of a row: merged into its unconfirmed edits."""
        row.revision = revision
        resolution = "local kept" if self.conflict == "merge" else "remote won"
        journal = [
            (id_, col, tag(row.cells[col]), tag(value), revision, resolution)
            for col, value in remote.items()
            if col in row.changed and not same_cell(row.cells[col], value)
        ]
        for col, value in remote.items():
            if col not in row.changed or self.conflict == "remote":
                row.cells[col] = value
        if self.conflict == "remote" and row.changed:
            # The remote won: edits not sent are dropped; one in flight cannot be.
            flight = row.flight
            row.changed = {c: flight.taken - 1 for c in flight.columns} if flight else {}
            row.rejected = False
            event("remote won over an edit in flight" if flight else "remote won")
        return journal

    def _expect_delete(self, id_: int, row: Row) -> list[Journaled]:
        """A remote delete: the row goes, its edits are journaled and its entries cancelled."""
        del self.rows[id_]
        self.tombstones[id_] = row.revision
        if self.batch is not None:
            rest = [e for e in self.batch.items if e.internal_id != row.internal_id]
            self.batch = OutboxBatch(self.batch.tracking_id, tuple(rest), True) if rest else None
        if row.changed:
            event("edited row deleted remotely")
        return [
            (id_, col, tag(row.cells[col]), tag(None), row.revision, "deleted remotely")
            for col in row.changed
        ]

    @initialize(
        records=st.lists(
            st.fixed_dictionaries({f: REMOTE[f] for f in BASE_FIELDS}), min_size=2, max_size=3
        ),
        conflict=st.sampled_from(["merge", "remote"]),
    )
    def first_pull(self, records: list[dict[str, Any]], conflict: str) -> None:
        """Pull a few contacts (every field set, so each field's kind is known)."""
        changes = [up("contact", i, 10, **data) for i, data in enumerate(records, 1)]
        self._pull(changes)
        self._expect_pull(changes)
        assert self.replica.catalog.tables["contact"].columns == {c: c for c in self.columns}
        self.conflict = conflict
        self.source = PushSource("out", "contact", conflict=conflict)
        self.loop.run(self.replica.register_push([self.source]))

    @precondition(lambda self: bool(self.rows))
    @rule(data=st.data())
    def app_update(self, data: st.DataObject) -> None:
        """The app updates some columns of some rows in one statement (or rolls it back)."""
        self.step += 1
        ids = data.draw(st.lists(st.sampled_from(sorted(self.rows)), min_size=1, unique=True))
        cols = data.draw(st.lists(st.sampled_from(self.columns), min_size=1, unique=True))
        first = self.rows[ids[0]]
        sets: dict[str, Cell] = {}
        keep: list[str] = []  # columns set to themselves: SET col = col
        for col in cols:
            how = data.draw(st.sampled_from(["keep", "same", "other"]), label=f"{col} =")
            if how == "keep":
                keep.append(col)
            else:
                sets[col] = first.cells[col] if how == "same" else data.draw(APP_VALUES)
        assigns = ", ".join([f'"{c}" = "{c}"' for c in keep] + [f'"{c}" = ?' for c in sets])
        marks = ", ".join("?" * len(ids))
        sql = f"UPDATE contact SET {assigns} WHERE id IN ({marks})"
        rollback = data.draw(st.integers(0, 7), label="roll back if 0") == 0
        if rollback:
            self.app.execute("BEGIN")
        assert self.app.execute(sql, (*sets.values(), *ids)).rowcount == len(ids)
        if rollback:
            self.app.execute("ROLLBACK")  # the capture goes with the edit
            return
        for id_ in ids:
            row = self.rows[id_]
            for col, value in sets.items():
                new = cell(value)
                if not sql_equal(row.cells[col], new):
                    if row.rejected:
                        event("rejected row edited")
                    row.changed[col] = self.step
                    row.rejected = False  # editing a rejected row requeues it
                elif not same_cell(row.cells[col], new):
                    event("cell type changed without a change in value")
                row.cells[col] = new

    @rule(limit=st.integers(1, 4))
    def take(self, limit: int) -> None:
        """The push takes a batch: the unanswered one again, else the oldest pending rows."""
        self.step += 1
        batch = self.loop.run(self.replica.take_push_batch(self.source, limit))
        if self.batch is not None:
            assert batch is not None and batch.resend
            event("resend")
            assert batch.tracking_id == self.batch.tracking_id
            assert [(e.entry, tag(payload(e))) for e in batch.items] == [
                (e.entry, tag(payload(e))) for e in self.batch.items
            ]
            return
        waiting = {id_ for id_, row in self.rows.items() if row.pending()}
        blobs = {
            id_
            for id_ in waiting
            if any(isinstance(self.rows[id_].cells[c], bytes) for c in self.rows[id_].changed)
        }
        # Entries refused at this take (a BLOB to send): rejected, with the reason.
        refused = {}
        for id_ in waiting:
            state = self.app.execute(
                "SELECT reason FROM _replicad_outbox WHERE tbl = 'contact' AND internal_id = ? "
                "AND state = 'rejected'",
                (self.rows[id_].internal_id,),
            ).fetchone()
            if state is not None:
                refused[id_] = str(state[0])
        assert set(refused) <= blobs, refused
        assert all(r.startswith("a value of the row cannot be sent") for r in refused.values())
        entries = batch.items if batch is not None else []
        assert batch is None or not batch.resend
        assert len(entries) + len(refused) == min(limit, len(waiting))
        if limit >= len(waiting):
            assert set(refused) == blobs
        assert [e.entry for e in entries] == sorted(e.entry for e in entries)
        for id_ in refused:
            self.rows[id_].rejected = True
            event("unsendable entry refused at take")
        by_iid = {row.internal_id: id_ for id_, row in self.rows.items()}
        for e in entries:
            id_ = by_iid[e.internal_id]
            row = self.rows[id_]
            assert id_ in waiting and id_ not in blobs and e.op == "update"
            columns = frozenset(row.changed)
            data = {c: pushed(row.cells[c], self.kinds.get(c)) for c in columns}
            expected = {"data": data, "id": str(id_), "associations": []}
            assert tag(payload(e)) == tag(expected), (id_, payload(e), expected)
            json.dumps(payload(e), allow_nan=False)  # strict JSON, as it goes on the wire
            row.flight = Flight(e.entry, self.step, columns, payload(e))
        self.batch = batch

    @precondition(lambda self: self.batch is not None)
    @rule(data=st.data())
    def answer(self, data: st.DataObject) -> None:
        """The destination confirms, rejects or does not answer each entry of the batch."""
        self.step += 1
        assert self.batch is not None
        said: list[Said] = []
        rest: list[PushItem] = []
        by_iid = {row.internal_id: id_ for id_, row in self.rows.items()}
        for e in self.batch.items:
            what = data.draw(st.sampled_from(["confirm", "reject", "lost"]), label=f"{e.entry}")
            id_ = by_iid[e.internal_id]
            row = self.rows[id_]
            flight = row.flight
            assert flight is not None and flight.entry == e.entry
            if what == "lost":
                rest.append(e)
                continue
            row.flight = None
            newer = any(at > flight.taken for at in row.changed.values())
            if what == "confirm":
                said.append(Said(e.entry, id=str(id_)))
                for col in flight.columns:
                    if row.changed[col] < flight.taken:
                        del row.changed[col]
            else:
                said.append(Said(e.entry, rejected="invalid"))
                # A newer edit is folded into the rejected entry, which is requeued.
                row.rejected = not newer
                event("rejected" if row.rejected else "rejected, newer edit folded in")
        counts = self.loop.run(self.replica.record_push("contact", said))
        assert counts.confirmed == sum(s.rejected is None for s in said)
        assert counts.rejected == sum(s.rejected is not None for s in said)
        assert counts.merged == 0
        self.batch = OutboxBatch(self.batch.tracking_id, tuple(rest), True) if rest else None

    @precondition(lambda self: any(row.rejected for row in self.rows.values()))
    @rule()
    def retry_rejected(self) -> None:
        """``replicad retry``: rejected entries go back to pending."""
        self.step += 1
        rejected = [row for row in self.rows.values() if row.rejected]
        assert self.loop.run(self.replica.requeue_rejected(None)) == len(rejected)
        for row in rejected:
            row.rejected = False

    @rule(data=st.data())
    def pull(self, data: st.DataObject) -> None:
        """A page of newer (or stale, repeated, new, revived) revisions and deletes arrives."""
        self.step += 1
        # Unseen deletes' tombstones (UNKNOWN_REVISION) block everything: start from 0.
        marks = {i: r for i, r in self.tombstones.items() if r != UNKNOWN_REVISION}
        known = {**marks, **{id_: row.revision for id_, row in self.rows.items()}}
        fields = [*BASE_FIELDS, "extra"]
        changes = []
        for _ in range(data.draw(st.integers(1, 4), label="items")):
            id_ = data.draw(st.integers(1, MAX_ID), label="id")
            if data.draw(st.integers(0, 5), label="delete if 0") == 0:
                changes.append(gone("contact", id_))
                continue
            revision = known.get(id_, 0) + data.draw(st.integers(-1, 3), label="revision step")
            if revision < 1:
                continue
            known[id_] = max(known.get(id_, 0), revision)
            present = data.draw(st.lists(st.sampled_from(fields), unique=True), label="fields")
            values = {f: data.draw(st.none() | REMOTE[f], label=f) for f in present}
            changes.append(up("contact", id_, revision, **values))
        if not changes:
            return
        got = self._pull(changes)
        expected = self._expect_pull(changes)
        journal = [
            (id_, col, tag(local), tag(remote), revision, resolution)
            for id_, col, local, remote, revision, resolution in self.app.execute(
                "SELECT id, field, local_value, remote_value, revision, resolution "
                "FROM replicad_conflicts WHERE seq > ? ORDER BY seq",
                (self.conflicts_seen,),
            )
        ]
        assert sorted(map(repr, journal)) == sorted(map(repr, expected))
        assert got == len(expected)
        if expected:
            event("conflict journaled")
        self.conflicts_seen += len(journal)

    # -- invariants --------------------------------------------------------------

    def _outbox(self) -> list[tuple[Any, ...]]:
        return self.app.execute(
            "SELECT seq, tbl, internal_id, op, state, fields, payload, batch "
            "FROM _replicad_outbox ORDER BY seq"
        ).fetchall()

    @invariant()
    def outbox_matches_model(self) -> None:
        """(a) one open entry per row, (b) open fields = unconfirmed changes, states as modeled."""
        by_iid = {row.internal_id: row for row in self.rows.values()}
        seen: dict[str, dict[str, list[tuple[set[str], Any]]]] = {}
        for _, tbl, iid, op, state, fields, stored, _ in self._outbox():
            assert tbl == "contact" and op == "update"
            if iid not in by_iid or state == "cancelled":
                # Deleted remotely, or the remote won: no entry of it stays open.
                assert state in ("confirmed", "cancelled"), (iid, state)
                continue
            cols = set(json.loads(fields))
            seen.setdefault(iid, {}).setdefault(state, []).append((cols, stored))
        for iid, row in by_iid.items():
            states = seen.get(iid, {})
            open_ = len(states.get("pending", [])) + len(states.get("rejected", []))
            assert open_ <= 1, f"row {iid} has {open_} entries to send"
            union: set[str] = set()
            for s in OPEN:
                for c, _ in states.get(s, []):
                    union |= c
            assert union == set(row.changed), (iid, union, row.changed)
            flights = states.get("in_flight", [])
            if row.flight is None:
                assert not flights
            else:
                ((cols, stored),) = flights
                assert cols == set(row.flight.columns)
                assert tag(json.loads(stored)) == tag(row.flight.payload)
            waiting = states.get("rejected" if row.rejected else "pending", [])
            if row.rejected or row.pending():
                assert [c for c, _ in waiting] == [row.waiting()]
            else:
                assert not states.get("pending") and not states.get("rejected")

    @invariant()
    def rows_match_model(self) -> None:
        """(d) _pending is 1 iff the row has open entries; (f) every cell is as modeled."""
        cols = "".join(f', "{c}"' for c in self.columns)
        got = {
            r[0]: r[1:]
            for r in self.app.execute(
                "SELECT c.id, c._revision, c._pending, EXISTS (SELECT 1 FROM _replicad_outbox o "
                "WHERE o.tbl = 'contact' AND o.internal_id = c._internal_id AND o.state IN "
                f"('pending', 'in_flight', 'rejected')){cols} FROM contact c"
            )
        }
        assert set(got) == set(self.rows)
        for id_, row in self.rows.items():
            revision, flag, has_open, *cells = got[id_]
            assert flag == has_open == bool(row.changed), (id_, flag, has_open, row.changed)
            assert revision == row.revision
            assert [tag(v) for v in cells] == [tag(row.cells[c]) for c in self.columns], id_


def test_capture_tracks_exactly_the_unconfirmed_app_edits() -> None:
    """Edits, batches, answers and pulls in any order keep the outbox and rows as modeled."""
    run_state_machine_as_test(
        CaptureMachine,
        settings=settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


# -- the same properties where the trigger compares columns in several chunks -----------

WIDE = 130  # more data columns than one json_array() call takes (see store.tables)


async def _wide_run(edits: list[dict[int, SQLValue]]) -> None:
    with tempfile.TemporaryDirectory(dir=SHM if SHM.is_dir() else None) as tmp:
        replica = await Replica.open(Path(tmp) / "replica.db")
        app = sqlite3.connect(replica.path, timeout=5, isolation_level=None)
        try:
            await replica.register_sync("mirror", "pull", "crm")
            await replica.apply_page(
                TARGET, page(up("contact", 1, 1, **{f"f{i}": 0 for i in range(WIDE)}))
            )
            source = PushSource("out", "contact")
            await replica.register_push([source])
            cells: dict[str, SQLValue] = {f"f{i}": 0 for i in range(WIDE)}
            changed: set[str] = set()
            for edit in edits:
                sets = {f"f{i}": v for i, v in edit.items()}
                assigns = ", ".join(f'"{c}" = ?' for c in sets)
                app.execute(f"UPDATE contact SET {assigns} WHERE id = 1", tuple(sets.values()))
                changed |= {c for c, v in sets.items() if not sql_equal(cells[c], v)}
                cells.update(sets)
                fields = app.execute(
                    "SELECT fields FROM _replicad_outbox WHERE state = 'pending'"
                ).fetchall()
                assert [set(json.loads(f)) for (f,) in fields] == ([changed] if changed else [])
            batch = await replica.take_push_batch(source, 10)
            if not changed:
                assert batch is None
                return
            assert batch is not None
            (entry,) = batch.items
            assert tag(payload(entry)["data"]) == tag({c: cells[c] for c in changed})
        finally:
            app.close()
            await replica.close()


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.integers(0, WIDE - 1), st.sampled_from([0, 1, 1.0, None, "x"]), min_size=1
        ),
        min_size=1,
        max_size=4,
    )
)
def test_wide_table_records_exactly_the_changed_columns(edits: list[dict[int, SQLValue]]) -> None:
    """With more columns than one comparison chunk, fields are still exactly what changed."""
    anyio.run(_wide_run, edits)


# -- values with no strict JSON form ---------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [b"\x00blob", float("inf"), float("-inf")],
)
async def test_unsendable_value_rejects_its_entry_alone(replica: Replica, value: object) -> None:
    """A changed cell with no strict JSON form rejects its entry at take; others still go."""
    await replica.apply_page(
        TARGET, page(up("contact", 1, 1, score=1), up("contact", 2, 1, score=2))
    )
    source = PushSource("out", "contact")
    await replica.register_push([source])
    app = sqlite3.connect(replica.path, timeout=5, isolation_level=None)
    try:
        app.execute("UPDATE contact SET score = ? WHERE id = 1", (value,))
        app.execute("UPDATE contact SET score = 3 WHERE id = 2")
        batch = await replica.take_push_batch(source, 10)
        assert batch is not None
        for e in batch.items:
            json.dumps(payload(e), allow_nan=False)  # what httpx sends
        assert [payload(e)["id"] for e in batch.items] == ["2"]
        state = app.execute(
            "SELECT o.state FROM _replicad_outbox o JOIN contact c "
            "ON c._internal_id = o.internal_id WHERE c.id = 1"
        ).fetchone()
        assert state == ("rejected",)
    finally:
        app.close()
